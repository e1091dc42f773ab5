"""Executing a plan: one streaming pass over both checkpoints, every block-format output at once.

Work items are row chunks of one tensor. One reader thread per checkpoint (``source.reader``)
reads its files front to back in large blocks, ahead of the work; worker threads widen each
chunk to float32 (permuting Q/K rows on the way), extrapolate (in float32, or with the ExPO
authors' bf16 roundings: the plan says which per tensor), and quantize it for every output
(numpy, ggml and the C kernels release the GIL, so this uses every core; a BF16 pair takes the
first three in one compiled loop, ``convert.fused``, and Q8_0 another, for the same bytes); the
main thread writes results in plan order. A bounded window of chunks in flight and a bounded pool
of read blocks keep memory flat whatever the model size. K-quants follow from the 16-bit output
through llama.cpp.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np

from .._fs import BuiltFile, drop_cached_file, part_path, sha256_file
from ..errors import ExpoError
from ..gguf_file.imatrix import ImatrixInput
from ..progress import SILENT, Progress
from ..quant.llama import llama_quantize
from ..quant.types import INTERMEDIATE, QUANTS, quantize_rows
from ..runtime.interrupt import interruptible
from ..source.checkpoint import DTYPES, TensorRef
from ..source.reader import LocalFile, Piece, Span, SpanStream
from ..source.remote_repo import RemoteFiles
from .extrapolate import bf16_delta, bf16_step, extrapolate, round_bf16, widen
from .plan import Plan, TensorJob, check_ready
from .writer import GGUFStream, verify

T = gguf.GGMLQuantizationType


def _chunks(plan: Plan) -> Iterator[tuple[int, TensorJob, int, int]]:
    for i, job in enumerate(plan.tensors):
        for start in range(0, job.rlhf.rows, job.chunk_rows):
            yield i, job, start, min(start + job.chunk_rows, job.rlhf.rows)


def _span(ref: TensorRef, start: int, stop: int) -> Span:
    """The bytes of rows [start, stop) of ``ref``: never outside the tensor's own range."""
    row_bytes = ref.row_elems * DTYPES[ref.dtype].itemsize
    return Span(ref.file, ref.offset + start * row_bytes, (stop - start) * row_bytes)


def open_streams(plan: Plan, remote: RemoteFiles) -> tuple[SpanStream, SpanStream]:
    """One reader per checkpoint, ahead of the pass: every chunk's bytes in the order it needs them
    (from the disk, or from the hub for a shard in ``remote``)."""
    chunks = list(_chunks(plan))
    keep = plan.request.keep_cache
    return tuple(  # type: ignore[return-value]
        SpanStream(
            [_span(getattr(job, side), start, stop) for _, job, start, stop in chunks],
            lambda path: remote.open(path) if path in remote else LocalFile(path, keep_cache=keep),
        )
        for side in ("rlhf", "sft")
    )


class _Worker:
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
        for alpha, x in values(job, start, stop, pr, ps, bufs):
            x = x.reshape(stop - start, -1) if len(job.shape) > 1 else x.reshape(1, -1)
            for j, out in enumerate(self.plan.streamed):
                if out.alpha == alpha:
                    qtype = out.types[i]  # type: ignore[index]
                    c = self.kernels is not None and qtype == T.Q8_0
                    res = self.kernels.quantize_q8_0_c(x) if c else quantize_rows(x, qtype)  # type: ignore[union-attr]
                    # F32 output is x itself: copy it out of this thread's buffers before they are reused
                    results[j] = res.copy() if any(np.may_share_memory(res, b) for b in bufs) else res
        return results

    def _fused(
        self, job: TensorJob, start: int, stop: int, pr: Piece, ps: Piece, bufs: list[np.ndarray]
    ) -> Iterator[tuple[float, np.ndarray]]:
        """A BF16 pair through the compiled loop (``convert.fused``): one call per alpha."""
        try:
            r, s = np.frombuffer(pr.data, np.uint16), np.frombuffer(ps.data, np.uint16)
            for alpha in self.plan.request.alphas:
                x, bad = self.kernels.expo_bf16_rows(r, s, stop - start, job.rope_rows, alpha, job.math, bufs[0])
                if bad:
                    raise _not_finite(job, start, stop)
                yield alpha, x
        finally:
            pr.release()
            ps.release()

    def _numpy(
        self, job: TensorJob, start: int, stop: int, pr: Piece, ps: Piece, bufs: list[np.ndarray]
    ) -> Iterator[tuple[float, np.ndarray]]:
        """Any pair through numpy: widen both sides, then each alpha's result."""
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
            if not np.isfinite(x).all():
                raise _not_finite(job, start, stop)
            yield alpha, x


def _not_finite(job: TensorJob, start: int, stop: int) -> ExpoError:
    return ExpoError(
        f"{job.rlhf.name}: NaN or Inf in the result (rows {start}-{stop}); are both checkpoints intact?",
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


def _disk_error(plan: Plan, path: Path, e: OSError) -> ExpoError:
    if e.errno == errno.ENOSPC:
        return ExpoError(
            f"disk full writing {path.name}: the build needs {plan.disk_needed / 1e9:.2f} GB, "
            f"{plan.disk_free / 1e9:.2f} GB was free at the start",
            exit_code=1,
        )
    return ExpoError(f"cannot write {path}: {e.strerror}", exit_code=1)


def stream_pass(plan: Plan, progress: Progress) -> list[BuiltFile]:
    """The extrapolation pass; writes every block-format output (and any K-quant intermediate)
    under its ``.part`` name, checked and hashed; ``run_build`` moves them into place."""
    t0 = time.perf_counter()
    progress.task("extrapolating", plan.input_bytes)
    streams: list[GGUFStream] = []
    remote = RemoteFiles({**plan.rlhf.remote, **plan.sft.remote})
    readers = open_streams(plan, remote)
    worker = _Worker(plan, compiled_kernels())
    try:
        for out in plan.streamed:
            streams.append(GGUFStream(plan, out))
        window = max(2, plan.request.threads * 2)
        with ThreadPoolExecutor(plan.request.threads, thread_name_prefix="expo") as pool:
            pending: deque[tuple[Future[list[np.ndarray]], int]] = deque()
            try:
                for i, job, start, stop in _chunks(plan):
                    if len(pending) >= window:
                        _drain(pending.popleft(), streams, progress)
                    nbytes = (
                        (stop - start)
                        * job.rlhf.row_elems
                        * (DTYPES[job.rlhf.dtype].itemsize + DTYPES[job.sft.dtype].itemsize)
                    )
                    pr = readers[0].next()
                    try:
                        ps = readers[1].next()
                    except BaseException:
                        pr.release()
                        raise
                    pending.append((pool.submit(worker, i, job, start, stop, pr, ps), nbytes))
                while pending:
                    _drain(pending.popleft(), streams, progress)
                remote.finish()  # remote shards: streamed to the end, sha256 checked
            except BaseException:
                for fut, _ in pending:
                    fut.cancel()
                remote.close()  # a reader waiting on a remote stream stops now, not after its timeout
                raise
        seconds = time.perf_counter() - t0
        hashes = [s.finish() for s in streams]
        return [
            BuiltFile(s.out.path, s.out.quant.label, s.tmp.stat().st_size, seconds, h) for s, h in zip(streams, hashes)
        ]
    except OSError as e:
        for s in streams:
            s.abort()
        raise _disk_error(plan, Path(e.filename or plan.request.outdir), e) from None
    except BaseException:
        for s in streams:
            s.abort()
        raise
    finally:
        remote.close()
        for r in readers:
            r.close()


def _drain(item: tuple[Future[list[np.ndarray]], int], streams: list[GGUFStream], progress: Progress) -> None:
    fut, nbytes = item
    for stream, chunk in zip(streams, fut.result()):
        stream.write(chunk)
    progress.advance(nbytes)


def _remove_stale_parts(plan: Plan) -> None:
    """Temporaries of an earlier build of this NAME that was killed (kill -9, power loss): our own
    naming exactly (NAME[-aALPHA]-QUANT), never another build's whose name merely starts the same."""
    outdir = plan.request.outdir
    labels = "|".join(re.escape(q.label) for q in [*QUANTS.values(), INTERMEDIATE])
    ours = re.compile(rf"\.?{re.escape(plan.name)}(-a-?[^-/]+)?-({labels})(\.intermediate)?\.gguf\.part")
    if outdir.is_dir():
        for stale in outdir.glob("*.part"):
            if ours.fullmatch(stale.name):
                stale.unlink(missing_ok=True)


def run_build(
    plan: Plan, progress: Progress = SILENT, make_imatrix: Callable[[Path, Path], ImatrixInput] | None = None
) -> list[BuiltFile]:
    """Execute ``plan``: the streaming pass, then each K-quant from the float file; returns the
    files it wrote (the caller adds what goes beside them, such as Ollama Modelfiles).

    ``make_imatrix(model, keep)`` computes an importance matrix for ``--imatrix auto`` from the
    16-bit file and keeps it (the build does not import the measuring stage that runs a model).

    All or nothing: every output stays under its ``.part`` name until all of them are written and
    checked, then all are renamed; any failure or Ctrl+C removes every one of them.
    """
    check_ready(plan)
    parts = [part_path(o.path) for o in plan.streamed + plan.derived]
    _remove_stale_parts(plan)
    try:
        built = stream_pass(plan, progress)
        imatrix = dict(plan.imatrix)
        for out in plan.derived:
            assert out.source is not None
            uses = out.quant.imatrix_helps or out.quant.needs_imatrix
            if uses and out.alpha not in imatrix and out.alpha in plan.imatrix_keep:  # --imatrix auto
                if make_imatrix is None:
                    raise ExpoError("--imatrix auto needs a way to run the model: pass make_imatrix to run_build")
                imatrix[out.alpha] = make_imatrix(part_path(out.source), plan.imatrix_keep[out.alpha])
            progress.note(f"llama.cpp quantize -> {out.path.name}")
            t0 = time.perf_counter()
            tmp = part_path(out.path)
            interruptible(
                llama_quantize,
                part_path(out.source),
                tmp,
                out.quant,
                plan.request.threads,
                False,
                plan.request.overrides,
                imatrix.get(out.alpha) if uses else None,
                name="llama-quantize",
            )
            verify(tmp, plan)
            built.append(
                BuiltFile(out.path, out.quant.label, tmp.stat().st_size, time.perf_counter() - t0, sha256_file(tmp))
            )
            if not plan.request.keep_cache:  # llama.cpp, and the hash, read and write through the page cache
                drop_cached_file(tmp)
                drop_cached_file(part_path(out.source))
        temporary = {o.path for o in plan.streamed if o.temporary}
        kept = [b for b in built if b.path not in temporary]
        for b in kept:
            part_path(b.path).replace(b.path)
    finally:
        for p in parts:
            p.unlink(missing_ok=True)
    return kept
