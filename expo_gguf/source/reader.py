"""Reading checkpoint bytes as a stream: large aligned reads of each file, front to back, run ahead
of the consumer in a thread, into a small pool of buffers; the page cache left as it was found.

The build knows every byte range it will need, and in what order, before it reads one (the plan's
row chunks). A ``SpanStream`` reads those ranges of one checkpoint in a thread of its own, one
block (8 MiB) at a time, each block holding whole ranges, and hands every range out as a view into
its block, in order; a block is read again only once every view of it has been released. So the
consumer waits only when the disk is slower than it, and memory is the pool whatever the model.

Each file is a ``ByteSource``: something that fills a buffer from a byte offset. ``LocalFile``
reads with ``O_DIRECT`` where the filesystem takes it (no copy through the page cache, and no
pages left behind; ``F_NOCACHE`` on macOS), else, silently, buffered reads with
``posix_fadvise`` (sequential, then each block's pages dropped once read): tmpfs and some FUSE or
network mounts refuse ``O_DIRECT`` with EINVAL, at open or at the first read. ``keep_cache``
reads through the page cache and leaves it filled (a second build of the same pair is then
faster). A remote file (HTTP range requests) is another ``ByteSource``: ``alignment`` 1,
``read_into`` one range, ``close``.
"""

from __future__ import annotations

import errno
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ExpoError

BLOCK_BYTES = 8 << 20  # one read: large enough that the disk streams, small enough for the pool
DEPTH = 3  # blocks per stream: one being consumed, one ready, one being read
DIRECT_ALIGN = 4096  # O_DIRECT wants offset, length and buffer aligned to the logical block size


@dataclass(frozen=True)
class Span:
    """A byte range one consumer needs: ``nbytes`` at ``offset`` of ``file``."""

    file: Path
    offset: int
    nbytes: int

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


class ByteSource(Protocol):
    """One file's bytes, read in ranges in ascending order (a local file; later an HTTP URL)."""

    @property
    def alignment(self) -> int:
        """Reads start at offsets, and run for lengths, that are multiples of this."""
        ...

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from byte ``offset``; fewer bytes only at the end of the file. A failure is
        an ``ExpoError`` that names the file and the offset."""
        ...

    def close(self) -> None: ...


def direct_io_wanted() -> bool:
    """O_DIRECT unless the platform lacks it or EXPO_GGUF_NO_DIRECT is set (tests, benchmarks)."""
    return hasattr(os, "O_DIRECT") and not os.environ.get("EXPO_GGUF_NO_DIRECT")


class LocalFile:
    """A local file read with O_DIRECT where possible, else buffered with the cache dropped behind."""

    def __init__(self, path: Path, keep_cache: bool = False) -> None:
        self.path, self.keep_cache = path, keep_cache
        self.direct = False
        if not keep_cache and direct_io_wanted():
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                self.direct = True
                return
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: this filesystem takes no O_DIRECT; anything else is real
                    raise ExpoError(f"{path}: cannot open: {e.strerror}") from None
        self._open_buffered()

    def _open_buffered(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise ExpoError(f"{self.path}: cannot open: {e.strerror}") from None
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if sys.platform == "darwin" and not self.keep_cache:
            import fcntl

            fcntl.fcntl(self.fd, getattr(fcntl, "F_NOCACHE", 48), 1)

    @property
    def alignment(self) -> int:
        return DIRECT_ALIGN if self.direct else 1

    def read_into(self, offset: int, buf: memoryview) -> int:
        done = 0
        while done < len(buf):
            at = offset + done
            try:
                got = os.preadv(self.fd, [buf[done:]], at)
            except OSError as e:
                if e.errno == errno.EINVAL and self.direct:  # took the open, refuses the read: fall back, once
                    os.close(self.fd)
                    self.direct = False
                    self._open_buffered()
                    continue
                raise ExpoError(f"{self.path}: read error at byte {at}: {e.strerror}") from None
            if got == 0:
                break
            done += got
        if done and not self.direct and not self.keep_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, offset, done, os.POSIX_FADV_DONTNEED)
        return done

    def close(self) -> None:
        if not self.direct and not self.keep_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)  # what readahead fetched past the last block
        os.close(self.fd)


class _Block:
    """One aligned read buffer; free again once every piece cut from it is released."""

    def __init__(self, nbytes: int, pool: queue.Queue[_Block | None]) -> None:
        raw = np.empty(nbytes + DIRECT_ALIGN, np.uint8)
        skip = -raw.ctypes.data % DIRECT_ALIGN
        self.view = memoryview(raw[skip : skip + nbytes])
        self._pool, self._lock, self._refs = pool, threading.Lock(), 0

    def hold(self, n: int) -> None:
        self._refs = n
        if n == 0:
            self._pool.put(self)

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            free = self._refs == 0
        if free:
            self._pool.put(self)


class Piece:
    """One span's bytes: a read-only view into a block; ``release`` when done with them."""

    __slots__ = ("data", "_block")

    def __init__(self, data: memoryview, block: _Block) -> None:
        self.data, self._block = data, block

    def release(self) -> None:
        self._block.release()


def _align_up(n: int, a: int) -> int:
    return -(-n // a) * a


class SpanStream:
    """Reads ``spans`` (any files, in consumption order) ahead of the consumer, one thread.

    ``next()`` returns the next span's ``Piece`` (waiting for its read if need be), or raises the
    ``ExpoError`` its read met. Runs of spans that ascend in one file are read as one block each;
    a span that goes back, or to another file, starts a new block. ``close()`` stops the thread
    and closes every file.
    """

    def __init__(
        self,
        spans: Sequence[Span],
        open_file: Callable[[Path], ByteSource],
        block_bytes: int | None = None,
        depth: int = DEPTH,
    ) -> None:
        self._spans = spans
        self._open_file = open_file
        biggest = max((s.nbytes for s in spans), default=0)
        # a block holds at least one whole span, with room to start it at an aligned offset below
        self._size = max(block_bytes or BLOCK_BYTES, _align_up(biggest, DIRECT_ALIGN) + DIRECT_ALIGN)
        self._free: queue.Queue[_Block | None] = queue.Queue()
        for _ in range(max(2, depth)):
            self._free.put(_Block(self._size, self._free))
        self._ready: queue.Queue[Piece | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._files: dict[Path, ByteSource] = {}
        self._thread = threading.Thread(target=self._run, name="expo-read", daemon=True)
        self._thread.start()

    def next(self) -> Piece:
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _source(self, path: Path) -> ByteSource:
        src = self._files.get(path)
        if src is None:
            src = self._files[path] = self._open_file(path)
        return src

    def _run(self) -> None:
        spans, n = self._spans, len(self._spans)
        last_use = {s.file: k for k, s in enumerate(spans)}
        i = 0
        try:
            while i < n and not self._stop.is_set():
                first = spans[i]
                src = self._source(first.file)
                align = src.alignment
                start = first.offset - first.offset % align
                j, end = i + 1, first.end
                while (
                    j < n
                    and spans[j].file == first.file
                    and spans[j].offset >= spans[j - 1].end
                    and _align_up(spans[j].end, align) - start <= self._size
                ):
                    end = spans[j].end
                    j += 1
                block = self._free.get()
                if block is None or self._stop.is_set():
                    return
                length = min(_align_up(end, align), start + self._size) - start
                got = src.read_into(start, block.view[:length]) if end > start else 0
                if start + got < end:
                    raise ExpoError(f"{first.file}: truncated shard: wanted {end - start} bytes at {start}, got {got}")
                block.hold(j - i)
                for s in spans[i:j]:
                    self._ready.put(Piece(block.view[s.offset - start : s.end - start], block))
                for k in range(i, j):
                    if last_use[spans[k].file] == k:
                        self._files.pop(spans[k].file).close()
                i = j
        except BaseException as e:  # handed to the consumer, in order, by next()
            self._ready.put(e if isinstance(e, ExpoError) else ExpoError(f"reading {spans[i].file}: {e}"))

    def close(self) -> None:
        self._stop.set()
        self._free.put(None)  # wakes the thread if it waits for a block
        self._thread.join(timeout=10)
        for src in self._files.values():
            src.close()
        self._files.clear()
