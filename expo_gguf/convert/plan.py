"""The build plan: everything decided and checked from headers and JSON, before a byte is written.

``make_plan`` reads both checkpoints' headers, config and tokenizer, works out every tensor's
GGUF name, type and size in every output, and checks the pair against each other. Every problem it
finds is reported at once; ``--dry-run`` prints the plan and the build only executes it.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .._fs import unwritable_reason
from ..errors import ExpoError
from ..gguf_file.imatrix import ImatrixInput, load_imatrix
from ..quant.llama import TensorOverrides, check_imatrix
from ..quant.types import INTERMEDIATE, QUANTS, Quant, nbytes, refuse_without_imatrix, tensor_type
from ..source import remote
from ..source.checkpoint import Checkpoint, TensorRef, load_checkpoint
from ..source.hub import display_name
from ..source.presets import expo_name, published_preset
from ..source.reader import BLOCK_BYTES, DEPTH
from ..source.vocab import Vocab, load_vocab
from .mapping import (
    HParams,
    check_hparams,
    describe_rope,
    expected_shapes,
    hparams_from_config,
    rope_freqs,
    rope_heads,
    tensor_names,
)

CHUNK_ELEMS = 1 << 18  # float32 values per work item: 1 MiB, sized for a core's L2 cache
MATHS = ("bf16", "f32")  # convert.extrapolate: the ExPO authors' bf16 arithmetic, or float32 rounded once


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked for, as the CLI parsed it."""

    sft: str
    rlhf: str
    alphas: tuple[float, ...]
    quants: tuple[Quant, ...]
    outdir: Path
    name: str | None = None
    force: bool = False
    threads: int = 1
    chat_template: Path | None = None  # overrides the RLHF checkpoint's own
    fallback_template: str | None = None  # the preset's, for a checkpoint that ships none
    keep_cache: bool = False  # read and write through the page cache and leave it filled
    math: str | None = None  # "bf16" or "f32" for every tensor; None: bf16 where both store it in bf16
    # issue 15: llama-quantize's per-tensor choices, and an importance matrix file or "auto"
    overrides: TensorOverrides = TensorOverrides()
    imatrix: str | None = None
    remote: bool = False  # sft and rlhf are repo ids read from the hub as the build goes


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where its two inputs are, its GGUF name, and how to cut it in chunks."""

    gguf_name: str
    shape: tuple[int, ...]  # rows first, as stored by Hugging Face
    rlhf: TensorRef
    sft: TensorRef
    rope_rows: int | None  # rows per head when Q/K rows must be permuted, else None
    chunk_rows: int
    math: str  # "bf16": the authors' arithmetic on bf16 tensors; "f32": float32, rounded once


@dataclass(frozen=True, eq=False)
class ExtraTensor:
    """A tensor llama.cpp needs that no checkpoint holds (Llama 3.1's ``rope_freqs``): always F32."""

    gguf_name: str
    data: np.ndarray


@dataclass(frozen=True)
class Output:
    """One GGUF file the build writes; ``types`` is per tensor for files we stream ourselves."""

    quant: Quant
    alpha: float
    path: Path
    nbytes: int
    types: tuple[gguf.GGMLQuantizationType, ...] | None  # None: written by llama.cpp from `source`
    source: Path | None = None
    temporary: bool = False  # the 16-bit intermediate of K-quants nobody asked to keep
    name: str = ""  # general.name: the model at this alpha


@dataclass(frozen=True)
class Plan:
    request: BuildRequest
    name: str
    sft: Checkpoint
    rlhf: Checkpoint
    hparams: HParams
    vocab: Vocab
    tensors: tuple[TensorJob, ...]
    extra: tuple[ExtraTensor, ...]
    streamed: tuple[Output, ...]
    derived: tuple[Output, ...]
    warnings: tuple[str, ...]
    disk_free: int
    existing: tuple[Path, ...] = ()  # outputs already there: replaced with --force, else refused
    unwritable: str | None = None  # why nothing can be written into the output folder

    @property
    def outputs(self) -> tuple[Output, ...]:
        return self.streamed + self.derived

    # issue 15: per alpha, the importance matrix the quantizer gets (a given file, or an earlier
    # --imatrix auto one reused), or where --imatrix auto keeps the one it computes
    imatrix: dict[float, ImatrixInput] = dataclasses.field(default_factory=dict)
    imatrix_keep: dict[float, Path] = dataclasses.field(default_factory=dict)
    overridden: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # --tensor-type pattern -> tensors

    @property
    def math(self) -> str:
        """``expo.math`` in every output: bf16, f32, or mixed (bf16 for some tensors only)."""
        maths = {j.math for j in self.tensors}
        return maths.pop() if len(maths) == 1 else "mixed"

    @property
    def input_bytes(self) -> int:
        return self.sft.nbytes + self.rlhf.nbytes

    @property
    def disk_needed(self) -> int:
        return sum(o.nbytes for o in self.streamed + self.derived)

    @property
    def peak_ram(self) -> int:
        """Read blocks (a pool per checkpoint), worker buffers (two inputs and every output per
        chunk in flight) plus vocab and Python; remote shards add their stream windows."""
        per_chunk = CHUNK_ELEMS * 4 * (1 + min(len(self.request.alphas), 2) + len(self.streamed))
        blocks = 2 * DEPTH * BLOCK_BYTES
        streams = len(self.sft.remote) + len(self.rlhf.remote)  # remote shards: a window each, two ahead
        window = 2 * (remote.AHEAD + remote.BLOCK) + streams * (remote.BEHIND + remote.BLOCK) if streams else 0
        return blocks + self.request.threads * 3 * per_chunk + len(self.vocab.tokens) * 64 + 150 * 2**20 + window


def _check_pair(sft: Checkpoint, rlhf: Checkpoint) -> HParams:
    problems: list[str] = []
    hp_s = hparams_from_config(sft.config, sft.label)
    hp_r = hparams_from_config(rlhf.config, rlhf.label)
    for field in hp_r.__dataclass_fields__:
        if getattr(hp_s, field) != getattr(hp_r, field):
            s, r = (
                (describe_rope(hp_s), describe_rope(hp_r))
                if field == "rope_scaling"
                else (getattr(hp_s, field), getattr(hp_r, field))
            )
            problems.append(f"{field} {s} (SFT) vs {r} (RLHF)")
    only_r = sorted(set(rlhf.tensors) - set(sft.tensors))
    only_s = sorted(set(sft.tensors) - set(rlhf.tensors))
    if only_r:
        problems.append(f"{len(only_r)} tensors only in RLHF (first {only_r[0]})")
    if only_s:
        problems.append(f"{len(only_s)} tensors only in SFT (first {only_s[0]})")
    for name in sorted(set(rlhf.tensors) & set(sft.tensors)):
        if rlhf.tensors[name].shape != sft.tensors[name].shape:
            problems.append(
                f"{name} shape {list(sft.tensors[name].shape)} (SFT) vs {list(rlhf.tensors[name].shape)} (RLHF)"
            )
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ExpoError(f"SFT and RLHF checkpoints do not match: {'; '.join(problems[:4])}{more}")
    return hp_r


def _check_against_config(rlhf: Checkpoint, names: dict[str, str], hp: HParams) -> None:
    """The tensors must be exactly what llama.cpp will look for, in the shapes config.json implies;
    otherwise the build would succeed and llama.cpp refuse the file."""
    want = expected_shapes(hp)
    have = {names[n]: rlhf.tensors[n].shape for n in names}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [
        f"{n} is {list(have[n])}, config.json implies {list(want[n])}"
        for n in sorted(set(want) & set(have))
        if have[n] != want[n]
    ]
    problems = (
        ([f"missing {len(missing)} tensors (first {missing[0]})"] if missing else [])
        + ([f"{len(extra)} unexpected tensors (first {extra[0]})"] if extra else [])
        + wrong
    )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ExpoError(f"{rlhf.label}: tensors do not match config.json: {'; '.join(problems[:3])}{more}")


def _chunk_rows(shape: tuple[int, ...], rope_rows: int | None) -> int:
    row = math.prod(shape[1:]) if len(shape) > 1 else max(math.prod(shape), 1)
    rows = max(1, CHUNK_ELEMS // row)
    if rope_rows:  # whole heads, so the permutation stays inside a chunk
        rows = max(rope_rows, rows // rope_rows * rope_rows)
    return rows


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


def _free_space(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def output_path(req: BuildRequest, model_name: str, label: str) -> Path:
    """OUTDIR/MODEL-QUANT.gguf, MODEL being the model's name at that alpha (``model_names``)."""
    return req.outdir / f"{model_name}-{label}.gguf"


def check_ready(plan: Plan) -> None:
    """What stops ``plan`` from being executed, though ``--dry-run`` still prints it: an output
    folder that cannot be written, outputs that exist (without ``force``), too little disk."""
    outdir = plan.request.outdir
    if plan.unwritable:
        raise ExpoError(f"cannot write into {outdir}: {plan.unwritable}")
    if plan.existing and not plan.request.force:
        more = " (and more)" if len(plan.existing) > 1 else ""
        raise ExpoError(f"{plan.existing[0]} exists{more}; use --force to overwrite")
    if plan.disk_free < plan.disk_needed:
        raise ExpoError(
            f"not enough disk in {outdir}: the build needs {plan.disk_needed / 1e9:.2f} GB, "
            f"{plan.disk_free / 1e9:.2f} GB free",
            exit_code=1,
        )


def _check_request(req: BuildRequest) -> None:
    if not req.alphas:
        raise ExpoError("no alpha given")
    bad = [a for a in req.alphas if not math.isfinite(a)]
    if bad:
        raise ExpoError(f"alpha must be a finite number, got {bad[0]}")
    if req.math is not None and req.math not in MATHS:
        raise ExpoError(f"--math {req.math!r}: choose from {', '.join(MATHS)}")
    if len({f"{a:g}" for a in req.alphas}) != len(req.alphas):
        raise ExpoError(f"alpha {', '.join(f'{a:g}' for a in req.alphas)}: each alpha once")
    name = req.name
    if name is not None and (not name or "/" in name or "\\" in name or name.startswith(".")):
        raise ExpoError(f"--name {name!r}: a file name, not a path")


def make_plan(req: BuildRequest) -> Plan:
    _check_request(req)
    rlhf = load_checkpoint(req.rlhf, "--rlhf", req.remote)
    sft = load_checkpoint(req.sft, "--sft", req.remote)
    if sft.same_files(rlhf):
        raise ExpoError(f"SFT and RLHF are the same checkpoint ({rlhf.path}): the result would be the RLHF model")
    hp = _check_pair(sft, rlhf)
    check_hparams(hp, rlhf.config, rlhf.label)
    names = tensor_names(list(rlhf.tensors), hp)
    _check_against_config(rlhf, names, hp)
    vocab = load_vocab(rlhf.path, hp.vocab_size, req.chat_template, req.fallback_template)
    order = sorted(names, key=lambda n: (str(rlhf.tensors[n].file), rlhf.tensors[n].offset))
    jobs = []
    for hf_name in order:
        ref = rlhf.tensors[hf_name]
        heads = rope_heads(names[hf_name], hp)
        rope_rows = ref.shape[0] // heads if heads else None
        if heads and ref.shape[0] != heads * hp.head_dim:
            raise ExpoError(f"{hf_name}: {ref.shape[0]} rows do not hold {heads} heads of {hp.head_dim}")
        sft_ref = sft.tensors[hf_name]
        job_math = req.math or ("bf16" if ref.dtype == sft_ref.dtype == "BF16" else "f32")
        jobs.append(
            TensorJob(names[hf_name], ref.shape, ref, sft_ref, rope_rows, _chunk_rows(ref.shape, rope_rows), job_math)
        )
    freqs = rope_freqs(hp)
    extra = (ExtraTensor("rope_freqs.weight", freqs),) if freqs is not None else ()

    name, names = model_names(req, sft, rlhf)
    warnings = list(vocab.warnings)
    streamed: list[Output] = []
    derived: list[Output] = []
    extra_bytes = sum(t.data.nbytes for t in extra)
    # K-quants start from a float file holding the values exactly: under bf16 maths, BF16 (the values
    # llama.cpp would quantize from the converter's output), which F16 may round
    bf16_values = all(j.math == "bf16" for j in jobs)
    intermediate = QUANTS["bf16"] if bf16_values else INTERMEDIATE
    float_order = ("f32", "bf16", "f16") if bf16_values else ("f32", "f16", "bf16")
    for alpha in req.alphas:
        general = req.name or names[alpha]
        floats: dict[str, Output] = {}
        for quant in [q for q in req.quants if not by_llama_cpp(q, req)]:
            path = output_path(req, names[alpha], quant.label)
            out = _streamed_output(quant, alpha, path, jobs, extra_bytes, warnings, general)
            streamed.append(out)
            floats[quant.name] = out
        kquants = [q for q in req.quants if by_llama_cpp(q, req)]
        if not kquants:
            continue
        # a float file the user asked for doubles as the source, the most precise first
        source = next((floats[n] for n in float_order if n in floats), None)
        if source is None:
            tmp = output_path(req, f".{names[alpha]}", f"{intermediate.label}.intermediate")
            source = _streamed_output(intermediate, alpha, tmp, jobs, extra_bytes, [], general, temporary=True)
            streamed.append(source)
        for quant in kquants:
            # an estimate: llama.cpp's mixes keep some tensors at Q6_K/Q8_0 (+7% at 7B for Q4_K_M, +29% tiny)
            size = int(1.3 * sum(nbytes(tensor_type(quant, j.gguf_name, j.shape)[0], j.shape) for j in jobs))
            path = output_path(req, names[alpha], quant.label)
            derived.append(Output(quant, alpha, path, size, None, source.path, name=general))
    existing = tuple(o.path for o in streamed + derived if o.path.exists() and not o.temporary)
    imatrix, keep, overridden = _imatrix_and_overrides(req, names, jobs, derived, warnings)
    return Plan(
        req,
        name,
        sft,
        rlhf,
        hp,
        vocab,
        tuple(jobs),
        extra,
        tuple(streamed),
        tuple(derived),
        tuple(dict.fromkeys(warnings)),
        _free_space(req.outdir),
        existing,
        unwritable_reason(req.outdir),
        imatrix,
        keep,
        overridden,
    )


# --- issue 15: importance matrix and per-tensor overrides -------------------------------------


def by_llama_cpp(quant: Quant, req: BuildRequest) -> bool:
    """K- and IQ-quants always; a block type too when it gets an importance matrix or overrides
    (only llama.cpp's quantizer takes them), which also gives it llama.cpp's mix (output at Q6_K)."""
    if quant.by_llama_cpp:
        return True
    if not quant.imatrix_helps and quant.ggml_type != gguf.GGMLQuantizationType.Q8_0:
        return False  # F32, F16, BF16: nothing to choose
    return (req.imatrix is not None and quant.imatrix_helps) or req.overrides.any


def imatrix_path(req: BuildRequest, name: str) -> Path:
    """Where --imatrix auto keeps a build's importance matrix: NAME.imatrix.gguf, NAME as the
    model's files are named at that alpha."""
    return req.outdir / f"{name}.imatrix.gguf"


def _imatrix_and_overrides(
    req: BuildRequest, names: dict[float, str], jobs: list[TensorJob], derived: list[Output], warnings: list[str]
) -> tuple[dict[float, ImatrixInput], dict[float, Path], dict[str, list[str]]]:
    refuse_without_imatrix(req.quants, req.imatrix is not None)
    shapes = {j.gguf_name: tuple(reversed(j.shape)) for j in jobs}
    overridden = req.overrides.matches(list(shapes))
    wants = [o for o in derived if o.quant.imatrix_helps or o.quant.needs_imatrix]
    if req.imatrix is None or not wants:
        if req.imatrix is not None:
            warnings.append(f"--imatrix: none of {', '.join(q.name for q in req.quants)} uses an importance matrix")
        return {}, {}, overridden
    given: dict[float, ImatrixInput] = {}
    keep: dict[float, Path] = {}
    for alpha in dict.fromkeys(o.alpha for o in wants):
        name = names[alpha]
        path = Path(req.imatrix) if req.imatrix != "auto" else imatrix_path(req, name)
        if req.imatrix != "auto" or path.exists():
            given[alpha] = load_imatrix(path)
            check_imatrix(given[alpha].data, shapes, name, any(q.needs_imatrix for q in req.quants))
            if req.imatrix == "auto":
                warnings.append(f"reusing {path} (an earlier --imatrix auto of {name}); delete it to recompute")
        else:
            keep[alpha] = path
    return given, keep, overridden


def _streamed_output(
    quant: Quant,
    alpha: float,
    path: Path,
    jobs: list[TensorJob],
    extra_bytes: int,
    warnings: list[str],
    name: str,
    temporary: bool = False,
) -> Output:
    types = []
    for job in jobs:
        qtype, warning = tensor_type(quant, job.gguf_name, job.shape)
        if warning:
            warnings.append(f"{quant.label}: {warning}")
        types.append(qtype)
    size = extra_bytes + sum(nbytes(t, j.shape) for t, j in zip(types, jobs))
    return Output(quant, alpha, path, size, tuple(types), temporary=temporary, name=name)
