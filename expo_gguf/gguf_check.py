"""Tell a user, in one line, why a path is not a GGUF that llama.cpp can load.

llama.cpp's own loader fails on a bad file with a page of log and a generic ``ValueError``;
these checks run first (or after such a failure) so the user reads the actual cause: no such
file, not a GGUF at all, or a download/build that stopped short.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import gguf

from .errors import ExpoError

GGUF_MAGIC = b"GGUF"


def check_header(path: str | os.PathLike[str]) -> Path:
    """Cheap checks (exists, regular file, GGUF magic) that need only the first four bytes.

    The chat start-up runs this instead of a full ``GGUFReader`` parse, which costs seconds on
    a large vocabulary; ``open_gguf`` is the thorough version.
    """
    p = Path(path)
    if not p.exists():
        raise ExpoError(f"no such file: {p}")
    if not p.is_file():
        raise ExpoError(f"not a file: {p}")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        what = "an empty file" if not magic else f"magic {magic!r}, expected {GGUF_MAGIC!r}"
        raise ExpoError(f"{p} is not a GGUF file ({what})")
    return p


_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4


class _Walk:
    """Bounds-checked cursor over the header, so no count or length is trusted before it fits."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def bad(self, what: str) -> ExpoError:
        return ExpoError(f"{self.path} is damaged: {what} at byte {self.pos}; re-download or rebuild it")

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.bad("header runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8))[0]

    def string(self) -> None:
        self.take(self.u64())

    def value(self, vtype: int, depth: int = 0) -> None:
        if vtype in _SCALAR:
            self.take(_SCALAR[vtype])
        elif vtype == _STRING:
            self.string()
        elif vtype == _ARRAY and depth == 0:
            etype, count = self.u32(), self.u64()
            if etype in _SCALAR:
                self.take(count * _SCALAR[etype])
            elif etype in (_STRING, _ARRAY):
                if count * 8 > len(self.buf) - self.pos:
                    raise self.bad(f"array of {count} elements")
                for _ in range(count):
                    self.value(etype, depth + 1)
            else:
                raise self.bad(f"unknown array element type {etype}")
        else:
            raise self.bad(f"unknown value type {vtype}")


def _walk_header(p: Path) -> None:
    """Check every count, length and type in the header before gguf-py (or llama.cpp) trusts them.

    gguf-py allocates what the counts say and llama.cpp aborts the process on some bad headers,
    so a hostile or damaged file must be turned away here, in time linear in the header's size.
    """
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        w = _Walk(buf, p)
        w.take(4)
        version = w.u32()
        if version not in (2, 3):
            raise w.bad(f"GGUF version {version} (llama.cpp reads 2 and 3)")
        n_tensors, n_kv = w.u64(), w.u64()
        if n_tensors * 24 + n_kv * 13 > len(buf):
            raise w.bad(f"{n_tensors} tensors and {n_kv} keys cannot fit in {len(buf)} bytes")
        for _ in range(n_kv):
            w.string()
            w.value(w.u32())
        for _ in range(n_tensors):
            w.string()
            n_dims = w.u32()
            if not 1 <= n_dims <= _MAX_DIMS:
                raise w.bad(f"a tensor with {n_dims} dimensions")
            w.take(8 * n_dims)
            qtype = w.u32()
            if qtype not in _GGML_TYPES:
                raise w.bad(f"unknown tensor type {qtype}")
            w.take(8)


_GGML_TYPES = {int(t) for t in gguf.GGMLQuantizationType}


def open_gguf(path: str | os.PathLike[str]) -> gguf.GGUFReader:
    """Open ``path`` with gguf's reader after checking it is a complete GGUF file.

    A truncated file (an interrupted download or build) usually breaks the reader itself while
    it maps tensor data; where it does not, every tensor's data must still end inside the file.
    """
    p = check_header(path)
    size = p.stat().st_size
    _walk_header(p)
    try:
        reader = gguf.GGUFReader(p)
    except (ValueError, KeyError, IndexError, OverflowError, OSError, MemoryError) as e:
        raise ExpoError(
            f"{p} is truncated or damaged ({size} bytes; gguf cannot parse it: {e});"
            " re-download or rebuild it"
        ) from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ExpoError(
                f"{p} is truncated: tensor {t.name} ends at byte {end} but the file has {size};"
                " re-download or rebuild it"
            )
    return reader
