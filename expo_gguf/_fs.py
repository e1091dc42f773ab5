"""Files written whole or not at all (temporary names, atomic renames, hashes), and text read bounded.

Two kinds of output share these helpers. Small text files (a Modelfile, compare's report and JSON)
are written at once under ``.NAME.PID.part`` (two processes never share one) and renamed, so a
reader, a crash or Ctrl+C never sees half a file; ``open`` creates it, so its mode follows the
umask like any other file the user writes. GGUF outputs are streamed to ``NAME.part`` and renamed
by their writer once checked (``part_path``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ExpoError


@dataclass(frozen=True)
class BuiltFile:
    """One GGUF a command wrote: what ``build`` and ``quantize`` return and print."""

    path: Path
    quant: str
    nbytes: int
    seconds: float
    sha256: str


def part_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete and checked."""
    return path.with_name(path.name + ".part")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made first if missing), or None; writes nothing."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable" + (" (a read-only file system)" if _read_only_fs(folder) else "")
    return None


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_text_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        try:
            with tmp.open("w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ExpoError(f"cannot write {target}: {e.strerror or e}") from None


MAX_TEXT_BYTES = 10 * 2**20  # a long chat or prompt file is well under 1 MB; a cap keeps a wrong file harmless


def read_capped(path: Path, reader: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The file's UTF-8 text, refusing what is not a regular file or is over ``limit`` bytes.

    The size is checked before reading and the read itself is bounded, so neither a 30 GB file
    nor a device such as /dev/zero (size 0, endless) can fill a running session's memory; a
    FIFO is refused before opening, since opening one blocks until a writer appears. ``reader``
    names who reads, for the message ("/load reads conversations").
    """
    cap = f"{reader} up to {limit // 2**20} MB"
    try:
        if not path.is_file():
            raise ExpoError(f"cannot read {path}: " + ("not a regular file" if path.exists() else "no such file"))
        if path.stat().st_size > limit:
            raise ExpoError(f"{path} is {path.stat().st_size / 2**20:.1f} MB; {cap}")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ExpoError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > limit:  # grew since stat
        raise ExpoError(f"{path} is over {limit // 2**20} MB; {cap}")
    return decode_utf8(data, str(path))


COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` as text, or one line naming the first byte that is not UTF-8 (and a compressed
    file as such): what every reader of a user's text says, before llama.cpp ever sees it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        kind = next((k for magic, k in COMPRESSED.items() if data.startswith(magic)), None)
        hint = f"; it is {kind}-compressed: decompress it first" if kind else ""
        raise ExpoError(f"cannot read {where}: not UTF-8 text (byte {e.start}){hint}") from None
