"""What a build is asked for and what it works on: the request as the CLI parsed it, and the tensors
the plan cuts it into; plain frozen data, checked before anything is read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExpoError
from ..quant.llama import TensorOverrides
from ..quant.types import Quant
from ..source.checkpoint import TensorRef

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the pass computes in float32, alpha too
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


def check_request(req: BuildRequest) -> None:
    """What is wrong with the request itself, before any checkpoint is opened."""
    if not req.alphas:
        raise ExpoError("no alpha given")
    bad = [a for a in req.alphas if not math.isfinite(a) or abs(a) > FLOAT32_MAX]
    if bad:
        raise ExpoError(f"alpha must be a finite float32 number, got {bad[0]}")
    if req.math is not None and req.math not in MATHS:
        raise ExpoError(f"--math {req.math!r}: choose from {', '.join(MATHS)}")
    if len({f"{a:g}" for a in req.alphas}) != len(req.alphas):
        raise ExpoError(f"alpha {', '.join(f'{a:g}' for a in req.alphas)}: each alpha once")
    name = req.name
    if name is not None and (not name or "/" in name or "\\" in name or name.startswith(".")):
        raise ExpoError(f"--name {name!r}: a file name, not a path")
