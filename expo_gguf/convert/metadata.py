"""What every output's GGUF header holds, and so every output's exact size before it is written.

One function registers the key/values and tensor infos (``start_writer``): the writer streams the
file behind it, and the plan measures the same header in memory (``file_nbytes``), so a planned
size is the written size. For llama.cpp's files the plan asks llama.cpp's own dry run which type
each tensor gets (``llama_cpp_types``), from a stand-in of the float file it will read: that
file's header, the data left as a hole.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
from gguf.gguf_writer import WriterState

from ..errors import ExpoError
from ..quant.types import Quant, nbytes
from ..source.checkpoint import Checkpoint
from .mapping import ARCH_NAME, add_hparams
from .outputs import ALIGNMENT, Output, data_nbytes

if TYPE_CHECKING:  # the plan is built with the sizes measured here; it is only read
    from .plan import Plan

T = gguf.GGMLQuantizationType


def tool_version() -> str:
    try:
        return version("expo-gguf")
    except PackageNotFoundError:
        return "unknown"


def _source_id(ckpt: Checkpoint) -> str:
    """A repo id where we know one (HF cache, or config.json's _name_or_path), else the folder name."""
    guess = ckpt.config.get("_name_or_path")
    if ckpt.repo_id:
        return ckpt.repo_id
    if isinstance(guess, str) and guess.count("/") == 1 and not guess.startswith((".", "/")):
        return guess
    return ckpt.path.name


def add_metadata(w: gguf.GGUFWriter, plan: Plan, out: Output) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(out.name or plan.name)
    w.add_file_type(int(out.quant.file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_base_model_count(2)
    for i, ckpt in enumerate((plan.rlhf, plan.sft)):
        repo = _source_id(ckpt)
        w.add_base_model_name(i, repo.split("/")[-1])
        if "/" in repo:
            w.add_base_model_organization(i, repo.split("/")[0])
            w.add_base_model_repo_url(i, f"https://huggingface.co/{repo}")
    w.add_float32("expo.alpha", out.alpha)
    w.add_string("expo.math", plan.math)
    w.add_string("expo.sft", _source_id(plan.sft))
    w.add_string("expo.rlhf", _source_id(plan.rlhf))
    for key, ckpt in (("expo.sft_revision", plan.sft), ("expo.rlhf_revision", plan.rlhf)):
        if ckpt.revision:  # the commit both were read at (the hub's, or the HF cache snapshot's)
            w.add_string(key, ckpt.revision)
    w.add_string("expo.version", tool_version())
    add_hparams(w, plan.hparams)
    plan.vocab.add_to(w)


def start_writer(plan: Plan, out: Output, types: tuple[T, ...], path: Path | None) -> gguf.GGUFWriter:
    """A gguf-py writer with every key/value and tensor info registered (nothing written yet)."""
    w = gguf.GGUFWriter(path, ARCH_NAME)
    add_metadata(w, plan, out)
    for extra in plan.extra:
        w.add_tensor_info(extra.gguf_name, extra.data.shape, extra.data.dtype, extra.data.nbytes)
    for job, qtype in zip(plan.tensors, types):
        w.add_tensor_info(job.gguf_name, job.shape, np.dtype(np.float32), nbytes(qtype, job.shape), raw_dtype=qtype)
    return w


def header_bytes(plan: Plan, out: Output, types: tuple[T, ...]) -> bytes:
    """The header, key/values and tensor infos, as ``start_writer`` writes them (unpadded)."""
    w = start_writer(plan, out, types, None)
    sink = io.BytesIO()
    w.fout, w.state = [sink], WriterState.EMPTY  # type: ignore[list-item]  # gguf-py writes to any file object
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return sink.getvalue()


def file_sizer(plan: Plan) -> Callable[[Output, tuple[T, ...]], int]:
    """The exact size of an output of ``plan`` with given tensor types: its header padded, then the
    data. The header is packed once (a 128k vocabulary takes 0.4 s): outputs differ in it only by
    ``general.name``'s length, their alpha, file type and tensor types being fixed-size fields."""
    first = plan.streamed[0]  # every build streams one file at least (K-quants start from one)
    measured = len(header_bytes(plan, first, first.types or ()))

    def size(out: Output, types: tuple[T, ...]) -> int:
        n = measured + len((out.name or plan.name).encode()) - len((first.name or plan.name).encode())
        return n + -n % ALIGNMENT + data_nbytes(types, plan.tensors, plan.extra)

    return size


def llama_cpp_types(plan: Plan, source: Output, quant: Quant) -> tuple[T, ...] | None:
    """The type llama.cpp's quantizer gives each of ``plan.tensors`` when it makes ``quant`` from
    ``source``, from its own dry run over a stand-in of ``source`` (its header, the data a hole in
    a temporary file: no disk used); None where llama.cpp cannot be asked."""
    assert source.types is not None
    try:
        from ..quant.llama import dry_run

        with tempfile.TemporaryDirectory(prefix="expo-gguf-plan-") as tmp:
            stub = Path(tmp) / "source.gguf"
            head = header_bytes(plan, source, source.types)
            with open(stub, "wb") as f:
                f.write(head)
                f.truncate(len(head) + -len(head) % ALIGNMENT + data_nbytes(source.types, plan.tensors, plan.extra))
            r = plan.request
            found = dry_run(stub, quant, r.threads, False, r.overrides).types
    except (ImportError, OSError, ExpoError, KeyError):
        return None
    types = tuple(found.get(j.gguf_name) for j in plan.tensors)
    return None if any(t is None for t in types) else types  # type: ignore[return-value]
