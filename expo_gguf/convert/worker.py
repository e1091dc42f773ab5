"""One row chunk of one tensor, from the stored bytes of both checkpoints to the bytes of every
output; called from many threads at once (numpy, ggml and the C kernels release the GIL).

A BF16 pair is widened, permuted and extrapolated by the compiled loop (``convert.fused``), Q8_0 by
the compiled quantizer (``quant.q8_0_c``), where the install built them (``compiled_kernels``);
numpy's path gives the same bytes. Every result is checked against what each output can hold
before it is quantized: NaN or Inf, a value F16 cannot store, a Q8_0 scale past f16's range, a
K-quant's input outside F16's range (``quant.types.overflows``), from the chunk's largest magnitude
that both paths compute on the way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import gguf
import numpy as np

from ..errors import ExpoError
from ..quant.types import Quant, limit_text, overflows, quantize_rows, scales_overflow
from ..source.checkpoint import DTYPES, TensorRef
from ..source.reader import Piece
from .extrapolate import bf16_delta, bf16_step, extrapolate, round_bf16, widen
from .plan import Plan, TensorJob

T = gguf.GGMLQuantizationType


class ChunkWorker:
    """One chunk from read to quantized bytes; called from many threads at once.

    Each thread reuses its own input buffers: fresh ones per chunk cost a page fault per 4 KiB
    and the kernel's zeroing of every page (measured: half the build's CPU time went to the
    kernel at 7B). Only the results handed to the writer are new arrays.
    """

    def __init__(self, plan: Plan, kernels: SimpleNamespace | None = None) -> None:
        self.plan = plan
        self.kernels = kernels  # the compiled kernels (``compiled_kernels``), or None for numpy throughout
        self.local = threading.local()
        self.max_elems = max((j.chunk_rows * j.rlhf.row_elems for j in plan.tensors), default=1)
        # per streamed output, the first K-quant llama.cpp makes from it: its input range is checked here
        self.feeds: list[Quant | None] = [
            next((d.quant for d in plan.derived if d.source == o.path), None) for o in plan.streamed
        ]

    def _buffers(self) -> list[np.ndarray]:
        """float32 buffers for: RLHF, SFT, scratch space for bf16 rounding, and with several alphas
        a result buffer (RLHF must survive until the last alpha). The stored bytes stay in the
        reader's blocks."""
        if not hasattr(self.local, "bufs"):
            n = 4 if len(self.plan.request.alphas) > 1 else 3
            self.local.bufs = [np.empty(self.max_elems, np.float32) for _ in range(n)]
        return self.local.bufs

    @staticmethod
    def _widen(piece: Piece, ref: TensorRef, rows: int, rope_rows: int | None, out: np.ndarray) -> np.ndarray:
        """The stored rows into ``out`` as float32, Q/K rows permuted on the way (llama.cpp's
        ``LlamaModel.permute`` done by where each row lands, instead of a copy of its own)."""
        stored = np.frombuffer(piece.data, DTYPES[ref.dtype])
        n = stored.size
        if rope_rows:
            heads, half = rows // rope_rows, rope_rows // 2
            widen(stored.reshape(heads, 2, half, -1), ref.dtype, out[:n].reshape(heads, half, 2, -1).swapaxes(1, 2))
        else:
            widen(stored, ref.dtype, out)
        return out[:n]

    def __call__(self, i: int, job: TensorJob, start: int, stop: int, pr: Piece, ps: Piece) -> list[np.ndarray]:
        bufs = self._buffers()
        results: list[np.ndarray] = [np.empty(0)] * len(self.plan.streamed)
        values = self._fused if self.kernels and job.rlhf.dtype == job.sft.dtype == "BF16" else self._numpy
        for alpha, x, amax in values(job, start, stop, pr, ps, bufs):
            x = x.reshape(stop - start, -1) if len(job.shape) > 1 else x.reshape(1, -1)
            for j, out in enumerate(self.plan.streamed):
                if out.alpha == alpha:
                    qtype = out.types[i]  # type: ignore[index]
                    _check_range(job, alpha, amax, qtype, self.feeds[j] if len(job.shape) > 1 else None, start, stop)
                    c = self.kernels is not None and qtype == T.Q8_0
                    res = self.kernels.quantize_q8_0_c(x) if c else quantize_rows(x, qtype)  # type: ignore[union-attr]
                    if scales_overflow(qtype, res):
                        raise _too_large(job, alpha, amax, qtype.name, limit_text(qtype))
                    # F32 output is x itself: copy it out of this thread's buffers before they are reused
                    results[j] = res.copy() if any(np.may_share_memory(res, b) for b in bufs) else res
        return results

    def _fused(
        self, job: TensorJob, start: int, stop: int, pr: Piece, ps: Piece, bufs: list[np.ndarray]
    ) -> Iterator[tuple[float, np.ndarray, float]]:
        """A BF16 pair through the compiled loop (``convert.fused``): one call per alpha; each
        alpha's result with its largest magnitude."""
        try:
            r, s = np.frombuffer(pr.data, np.uint16), np.frombuffer(ps.data, np.uint16)
            for alpha in self.plan.request.alphas:
                yield alpha, *self.kernels.expo_bf16_rows(r, s, stop - start, job.rope_rows, alpha, job.math, bufs[0])
        finally:
            pr.release()
            ps.release()

    def _numpy(
        self, job: TensorJob, start: int, stop: int, pr: Piece, ps: Piece, bufs: list[np.ndarray]
    ) -> Iterator[tuple[float, np.ndarray, float]]:
        """Any pair through numpy: widen both sides, then each alpha's result and its largest magnitude."""
        try:
            r = self._widen(pr, job.rlhf, stop - start, job.rope_rows, bufs[0])
            s = self._widen(ps, job.sft, stop - start, job.rope_rows, bufs[1])
        finally:  # the reader's blocks are free for the next reads as soon as both are widened
            pr.release()
            ps.release()
        alphas = self.plan.request.alphas
        scratch = bufs[2].view(np.uint32)
        if job.math == "bf16":
            for x, dtype in ((r, job.rlhf.dtype), (s, job.sft.dtype)):
                if dtype != "BF16":  # as from_pretrained(torch_dtype=torch.bfloat16) loads it
                    round_bf16(x, x, scratch)
            s = bf16_delta(r, s, s, scratch)  # SFT is needed no more: its buffer holds dpo - sft
        for k, alpha in enumerate(alphas):
            last = k == len(alphas) - 1
            if job.math == "bf16":  # the last alpha may overwrite the difference in place
                x = bf16_step(r, s, alpha, s if last else bufs[3][: r.size], scratch)
            else:  # the last alpha may overwrite RLHF in place; earlier ones go to the result buffer
                # (alpha * SFT goes to SFT's buffer at the last alpha, else to the unused rounding scratch)
                x = extrapolate(
                    r, s, alpha, out=r if last else bufs[3][: r.size], scratch=s if last else bufs[2][: r.size]
                )
            yield alpha, x, float(np.maximum(x.max(), -x.min()))  # NaN if there is one


def _check_range(
    job: TensorJob, alpha: float, amax: float, qtype: T, feeds: Quant | None, start: int, stop: int
) -> None:
    """Refuse a result that would not be finite in the file: NaN or Inf itself, or too large for
    the tensor's type or for the K-quant llama.cpp makes from this file (``quant.types.overflows``)."""
    if not np.isfinite(amax):
        raise ExpoError(
            f"{_tensor(job)}: NaN or Inf in the result at alpha {alpha:g} (rows {start}-{stop}); "
            "are both checkpoints intact?",
            exit_code=1,
        )
    if feeds is not None and overflows(feeds.ggml_type, amax):
        raise _too_large(job, alpha, amax, feeds.label, limit_text(feeds.ggml_type))
    if overflows(qtype, amax):
        raise _too_large(job, alpha, amax, qtype.name, limit_text(qtype))


def _tensor(job: TensorJob) -> str:
    return f"{job.rlhf.name} ({job.gguf_name})"


def _too_large(job: TensorJob, alpha: float, amax: float, label: str, limit: str) -> ExpoError:
    return ExpoError(
        f"{_tensor(job)}: alpha {alpha:g} gives values up to {amax:.3g}, too large for {label} ({limit}); "
        "use a smaller alpha",
        exit_code=1,
    )


KERNELS_ENV = "EXPO_GGUF_KERNELS"


def compiled_kernels() -> SimpleNamespace | None:
    """The compiled kernels (``convert.fused``, ``quant.q8_0_c``) where the install built them; None
    means numpy throughout, with the same bytes. ``EXPO_GGUF_KERNELS=numpy`` asks for numpy's path,
    ``=c`` for the kernels or an error (tests, benchmarks); unset, the kernels if they are there."""
    want = os.environ.get(KERNELS_ENV, "")
    if want not in ("", "c", "numpy"):
        raise ExpoError(f"{KERNELS_ENV}={want}: expected c or numpy (or unset)")
    if want == "numpy":
        return None
    try:
        from ..quant.q8_0_c import quantize_q8_0_c
        from .fused import expo_bf16_rows
    except ImportError as e:  # installed without a C compiler: the numpy path is the same bytes
        if want == "c":
            raise ExpoError(
                f"{KERNELS_ENV}=c, but the compiled kernels are not installed ({e}); "
                "reinstall expo-gguf where a C compiler is found, or unset it"
            ) from None
        return None
    return SimpleNamespace(expo_bf16_rows=expo_bf16_rows, quantize_q8_0_c=quantize_q8_0_c)
