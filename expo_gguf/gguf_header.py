"""The trained context length, read from a GGUF's key/value section alone.

gguf-py's ``GGUFReader`` parses every field and tensor entry up front, which takes seconds on a
large vocabulary (2.9 s for SmolLM2-135M's 49k tokens and merges); chat and serve only need
``{arch}.context_length`` to cap ``--ctx`` before the model (and a KV cache sized for the
request) is loaded. Both keys come before the tokenizer arrays in files written by llama.cpp's
converter and by expo-gguf, so this walk usually reads a few hundred bytes.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from gguf import GGUF_MAGIC, GGUFValueType

V = GGUFValueType
_SCALAR = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
           V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}


class _Walker:
    """Sequential reads in the file's byte order; raises on a short read or an unknown type."""

    def __init__(self, f: BinaryIO, order: str) -> None:
        self.f, self.order = f, order
        self.size = os.fstat(f.fileno()).st_size

    def unpack(self, fmt: str) -> object:
        size = struct.calcsize(self.order + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise EOFError
        return struct.unpack(self.order + fmt, data)[0]

    def string(self) -> bytes:
        n = self.unpack("Q")
        if n > self.size - self.f.tell():  # a damaged length must not become a huge allocation
            raise EOFError
        data = self.f.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def value(self, kind: int) -> object:
        """A scalar or string; arrays are skipped (None) without reading their items one by one
        where the item size is fixed."""
        kind = V(kind)
        if kind == V.STRING:
            return self.string()
        if kind != V.ARRAY:
            return self.unpack(_SCALAR[kind])
        item, count = V(self.unpack("I")), self.unpack("Q")
        if item in _SCALAR:
            self.f.seek(count * struct.calcsize(self.order + _SCALAR[item]), os.SEEK_CUR)
        else:
            for _ in range(count):
                self.value(item)
        return None


def trained_context_length(path: str | os.PathLike[str]) -> int | None:
    """``{arch}.context_length`` from the header, or None when the file does not say (or is not
    a readable GGUF: llama.cpp's loader then reports the actual problem)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != struct.pack("<I", GGUF_MAGIC):
                return None
            version = struct.unpack("<I", f.read(4))[0]
            walk = _Walker(f, "<" if version & 0xFFFF else ">")  # big-endian files read byte-swapped
            walk.unpack("Q")  # tensor count
            n_kv = walk.unpack("Q")
            arch, lengths = None, {}
            for _ in range(n_kv):
                key = walk.string().decode("utf-8", errors="replace")
                value = walk.value(walk.unpack("I"))
                if key == "general.architecture" and isinstance(value, bytes):
                    arch = value.decode("utf-8", errors="replace")
                elif key.endswith(".context_length") and type(value) is int:
                    lengths[key] = value
                if arch is not None and f"{arch}.context_length" in lengths:
                    return lengths[f"{arch}.context_length"]
    except (OSError, EOFError, ValueError, KeyError, struct.error):
        return None
    return None
