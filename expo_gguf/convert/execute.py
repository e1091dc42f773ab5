"""Executing a plan: one streaming pass over both checkpoints, every block-format output at once.

Work items are row chunks of one tensor. One reader thread per checkpoint (``source.reader``)
reads its files front to back in large blocks, ahead of the work; worker threads
(``convert.worker``) widen each chunk to float32 (permuting Q/K rows on the way), extrapolate (in
float32, or with the ExPO authors' bf16 roundings: the plan says which per tensor), check the
result against what every output can hold, and quantize it for every output; the main thread
writes results in plan order. A bounded window of chunks in flight and a bounded pool
of read blocks keep memory flat whatever the model size. K-quants follow from the 16-bit output
through llama.cpp.
"""

from __future__ import annotations

import errno
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._fs import BuiltFile, drop_cached_file, part_path, sha256_file
from ..errors import ExpoError
from ..gguf_file.imatrix import ImatrixInput
from ..progress import SILENT, Progress
from ..quant.llama import llama_quantize
from ..quant.types import INTERMEDIATE, QUANTS
from ..runtime.interrupt import interruptible
from ..source.checkpoint import DTYPES, TensorRef
from ..source.reader import LocalFile, Span, SpanStream
from ..source.remote_repo import RemoteFiles
from .plan import Plan, TensorJob, check_ready
from .worker import ChunkWorker, compiled_kernels
from .writer import GGUFStream, verify


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
    progress.task("extrapolating", plan.input_bytes, unit="bytes")
    streams: list[GGUFStream] = []
    remote = RemoteFiles({**plan.rlhf.remote, **plan.sft.remote})
    readers = open_streams(plan, remote)
    worker = ChunkWorker(plan, compiled_kernels())
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
    created = _missing_folders(plan.request.outdir)
    done = False
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
            progress.task(f"llama.cpp quantize -> {out.path.name}", unit="tensors")  # the pass's bar goes
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
        done = True
    finally:
        for p in parts:
            p.unlink(missing_ok=True)
        if not done:
            _remove_empty(created)
    return kept


def _missing_folders(outdir: Path) -> list[Path]:
    """The output folder and those above it that do not exist yet (the build creates them), deepest first."""
    missing = []
    while not outdir.exists() and outdir != outdir.parent:
        missing.append(outdir)
        outdir = outdir.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """A failed or interrupted build takes back the folders it created, deepest first, where they
    are empty (something else may have put a file there meanwhile: then they stay)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
