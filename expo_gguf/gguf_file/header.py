"""Tell a user, in one line, why a path is not a GGUF that llama.cpp can load.

llama.cpp's own loader fails on a bad file with a page of log and a generic ``ValueError``;
these checks run first (or after such a failure) so the user reads the actual cause: no such
file, not a GGUF at all, or a download/build that stopped short.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..errors import ExpoError

GGUF_MAGIC = b"GGUF"


def check_header(path: str | os.PathLike[str]) -> Path:
    """The checks every command runs before llama.cpp sees a file: it exists, is a GGUF, and its
    header and tensor table are sound (``read_gguf_header``): milliseconds, unlike a full
    ``GGUFReader`` parse, which ``open_gguf`` adds for code that needs gguf-py's reader."""
    p = _gguf_path(path)
    read_gguf_header(p)
    return p


def _gguf_path(path: str | os.PathLike[str]) -> Path:
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


_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # GGUFValueType
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4
_GGML_TYPES = {int(t) for t in gguf.GGMLQuantizationType}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # ggml order: ne0 (the row length) first
    offset: int  # from the start of the data section


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF's metadata and tensor table, every count, length and bound already checked."""

    values: dict[str, object]  # scalars, strings, lists (numeric arrays as numpy arrays)
    tensors: list[TensorEntry]
    data_start: int = 0  # where the data section begins; a tensor's bytes are at data_start + offset


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

    def scalar(self, fmt: str) -> int | float | bool:
        return struct.unpack_from("<" + fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("Q")
        return self.buf[self.take(n) : self.pos].decode("utf-8", "replace")

    def value(self, vtype: int, depth: int = 0) -> object:
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth < 4:  # gguf-py writes arrays of arrays; 4 levels is plenty
            etype, count = self.scalar("I"), self.scalar("Q")
            if etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype])
                start = self.take(count * size)
                return np.frombuffer(self.buf, dtype="<" + _SCALAR[etype], count=count, offset=start).copy()
            if etype in (_STRING, _ARRAY):
                if count * 8 > len(self.buf) - self.pos:
                    raise self.bad(f"array of {count} elements")
                return [self.value(etype, depth + 1) for _ in range(count)]
            raise self.bad(f"unknown array element type {etype}")
        raise self.bad(f"unknown value type {vtype}")


def tensor_nbytes(t: TensorEntry) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
    return math.prod(t.shape) // block * size


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Check every count, length, type and tensor bound; return the metadata and tensor table.

    gguf-py allocates what the counts say and llama.cpp aborts the process on some bad headers,
    so a hostile, damaged or truncated file is turned away here first, in time linear in the
    header's size (10 ms for a 7B GGUF's 32k-token vocabulary; gguf-py's parse takes ~1 s).
    """
    p = _gguf_path(path)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        w = _Walk(buf, p)
        w.take(4)
        version = w.scalar("I")
        if version not in (2, 3):
            raise w.bad(f"GGUF version {version} (llama.cpp reads little-endian versions 2 and 3)")
        n_tensors, n_kv = w.scalar("Q"), w.scalar("Q")
        if n_tensors * 24 + n_kv * 13 > len(buf):
            raise w.bad(f"{n_tensors} tensors and {n_kv} keys cannot fit in {len(buf)} bytes")
        values: dict[str, object] = {}
        for _ in range(n_kv):
            key = w.string()
            values[key] = w.value(w.scalar("I"))
        tensors = []
        for _ in range(n_tensors):
            name = w.string()
            n_dims = w.scalar("I")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise w.bad(f"tensor {name!r} with {n_dims} dimensions")
            shape = tuple(w.scalar("Q") for _ in range(n_dims))
            qtype = w.scalar("I")
            if qtype not in _GGML_TYPES:
                raise w.bad(f"tensor {name!r} of unknown type {qtype}")
            tensors.append(TensorEntry(name, qtype, shape, w.scalar("Q")))
        align = values.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0:
            raise w.bad(f"alignment {align!r}")
        data_start = -(-w.pos // align) * align
        size = len(buf)
    for t in tensors:
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)][0]
        end = data_start + t.offset + tensor_nbytes(t)
        if t.shape[0] % block or end > size:
            raise ExpoError(
                f"{p} is truncated or damaged: tensor {t.name} ends at byte {end}, "
                f"the file has {size}; re-download or rebuild it"
            )
    return GGUFHeader(values, tensors, data_start)


def trained_context_length(path: str | os.PathLike[str]) -> int | None:
    """``{arch}.context_length`` from a checked header, to cap ``--ctx`` before llama.cpp loads."""
    values = read_gguf_header(path).values
    n = values.get(f"{values.get('general.architecture')}.context_length")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def open_gguf(path: str | os.PathLike[str]) -> gguf.GGUFReader:
    """Open ``path`` with gguf's reader after ``check_header`` (which already holds every tensor's
    data to the file's end), so a damaged file is one line, never a gguf-py exception."""
    p = check_header(path)
    size = p.stat().st_size
    try:
        reader = gguf.GGUFReader(p)
    except (ValueError, KeyError, IndexError, OverflowError, OSError, MemoryError) as e:
        raise ExpoError(
            f"{p} is truncated or damaged ({size} bytes; gguf cannot parse it: {e}); re-download or rebuild it"
        ) from None
    return reader
