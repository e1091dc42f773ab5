"""The files a build writes: their names, who writes each, the type of every tensor in it.

Names: ``model_names`` (the published name only for a preset's pair at its alpha, else ``-aALPHA``)
and ``output_path``. Types: ``streamed_types`` for the files the pass writes (our policy,
``quant.types.tensor_type``), ``mix_estimate`` for llama.cpp's files where its own dry run cannot
be asked (``convert.metadata.llama_cpp_types`` asks it). Sizes of whole files are ``convert.metadata``'s:
they need the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gguf

from ..quant.llama import TensorOverrides
from ..quant.types import Quant, nbytes, tensor_type
from ..source.checkpoint import Checkpoint
from ..source.hub import display_name
from ..source.presets import expo_name, published_preset
from .request import BuildRequest, ExtraTensor, TensorJob

T = gguf.GGMLQuantizationType
ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT  # every tensor's data starts (and so ends) on it, in ours and llama.cpp's


@dataclass(frozen=True)
class Output:
    """One GGUF file the build writes; ``types`` is per tensor for files we stream ourselves."""

    quant: Quant
    alpha: float
    path: Path
    nbytes: int
    types: tuple[T, ...] | None  # None: written by llama.cpp from `source`
    source: Path | None = None
    temporary: bool = False  # the 16-bit intermediate of K-quants nobody asked to keep
    name: str = ""  # general.name: the model at this alpha
    estimate: bool = False  # nbytes is llama.cpp's mix guessed, not the file's exact size


def default_name(rlhf: Checkpoint) -> str:
    return expo_name(rlhf.label)


def _identity(ckpt: Checkpoint) -> str:
    return ckpt.repo_id or display_name(ckpt.path)


def model_names(req: BuildRequest, sft: Checkpoint, rlhf: Checkpoint) -> tuple[str, dict[float, str]]:
    """The base name, and the model's name at each alpha (``general.name``, and its files' names
    before ``-QUANT``).

    Only the published model gets the published name (``<RLHF name>-ExPO``): a preset's pair,
    whether named by repo id or as local folders of those names, at that preset's own alpha. Any
    other alpha or pair carries its alpha (``NAME-a0.3``), so builds of several alphas one at a time
    never overwrite the published file or each other; several alphas in one build all carry theirs.
    A ``--name`` is the user's own: kept as given for a single alpha, and as ``general.name`` of
    every file (so each file of a several-alpha build equals its own single-alpha build).
    """
    if req.name:
        base, plain = req.name, len(req.alphas) == 1
    else:
        base = default_name(rlhf)
        preset = published_preset(_identity(sft), _identity(rlhf))
        plain = preset is not None and req.alphas == (preset.alpha,)
    return base, {a: base if plain else f"{base}-a{a:g}" for a in req.alphas}


def output_path(req: BuildRequest, model_name: str, label: str) -> Path:
    """OUTDIR/MODEL-QUANT.gguf, MODEL being the model's name at that alpha (``model_names``)."""
    return req.outdir / f"{model_name}-{label}.gguf"


def imatrix_path(req: BuildRequest, name: str) -> Path:
    """Where --imatrix auto keeps a build's importance matrix: NAME.imatrix.gguf, NAME as the
    model's files are named at that alpha."""
    return req.outdir / f"{name}.imatrix.gguf"


def by_llama_cpp(quant: Quant, req: BuildRequest) -> bool:
    """K- and IQ-quants always; a block type too when it gets an importance matrix or overrides
    (only llama.cpp's quantizer takes them), which also gives it llama.cpp's mix (output at Q6_K)."""
    if quant.by_llama_cpp:
        return True
    if not quant.imatrix_helps and quant.ggml_type != T.Q8_0:
        return False  # F32, F16, BF16: nothing to choose
    return (req.imatrix is not None and quant.imatrix_helps) or req.overrides.any


def streamed_types(quant: Quant, jobs: list[TensorJob], warnings: list[str]) -> tuple[T, ...]:
    """Every tensor's type in a file the pass writes; a fallback is a warning."""
    types = []
    for job in jobs:
        qtype, warning = tensor_type(quant, job.gguf_name, job.shape)
        if warning:
            warnings.append(f"{quant.label}: {warning}")
        types.append(qtype)
    return tuple(types)


def data_nbytes(types: tuple[T, ...], jobs: tuple[TensorJob, ...], extra: tuple[ExtraTensor, ...]) -> int:
    """The data section: the extra tensors, then every tensor, each padded to the alignment."""
    sizes = [t.data.nbytes for t in extra] + [nbytes(t, j.shape) for t, j in zip(types, jobs)]
    return sum(n + -n % ALIGNMENT for n in sizes)


def mix_estimate(quant: Quant, jobs: tuple[TensorJob, ...], overrides: TensorOverrides) -> tuple[T, ...]:
    """llama.cpp's mix, roughly, where its own dry run is not at hand: 1-D tensors F32, the output
    matrix Q6_K (for a type below it), the overrides, everything else the main type."""
    main = quant.ggml_type
    q6_bits = gguf.GGML_QUANT_SIZES[T.Q6_K][1] * 8 / gguf.GGML_QUANT_SIZES[T.Q6_K][0]
    types = []
    for job in jobs:
        qtype = main
        if len(job.shape) < 2:
            qtype = T.F32
        elif job.gguf_name == "output.weight":
            qtype = overrides.output_tensor_type or (T.Q6_K if quant.bpw < q6_bits else main)
        elif job.gguf_name == "token_embd.weight" and overrides.token_embedding_type is not None:
            qtype = overrides.token_embedding_type
        else:
            qtype = next((t for p, t in overrides.tensor_types if re.search(p, job.gguf_name)), main)
        if len(job.shape) >= 2 and job.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = T.Q8_0 if job.shape[-1] % 32 == 0 else T.F16
        types.append(qtype)
    return tuple(types)
