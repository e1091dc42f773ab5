"""Tell a user, in one line, why a path is not a GGUF that llama.cpp can load.

llama.cpp's own loader fails on a bad file with a page of log and a generic ``ValueError``;
these checks run first (or after such a failure) so the user reads the actual cause: no such
file, not a GGUF at all, or a download/build that stopped short.
"""

from __future__ import annotations

import os
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


def open_gguf(path: str | os.PathLike[str]) -> gguf.GGUFReader:
    """Open ``path`` with gguf's reader after checking it is a complete GGUF file.

    A truncated file (an interrupted download or build) usually breaks the reader itself while
    it maps tensor data; where it does not, every tensor's data must still end inside the file.
    """
    p = check_header(path)
    size = p.stat().st_size
    try:
        reader = gguf.GGUFReader(p)
    except (ValueError, KeyError, IndexError, OverflowError, OSError) as e:
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
