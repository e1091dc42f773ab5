"""llama.cpp's log: one callback for the whole process, and this module owns it.

llama.cpp keeps a single log callback per process (``llama_log_set``, which sets ggml's too), and
llama-cpp-python installs its own at import. Ours replaces it the first time any command touches
llama.cpp and stays: quiet by default (llama-cpp-python's filter would let ggml's warnings
through), everything on stderr with ``--verbose``, and while ``capture`` is active its lines
(or only its error lines, for one-line messages such as the quantizer's) are kept and nothing is
printed.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

ERROR_LEVEL = 4  # GGML_LOG_LEVEL_ERROR (3 is WARN)
_verbose = False
_captures: list[tuple[list[str], bool]] = []  # (lines, errors only)
_lock = threading.Lock()


def _log(level: int, text: bytes) -> None:
    with _lock:
        if _captures:
            lines, errors_only = _captures[-1]
            if level == ERROR_LEVEL or not errors_only:
                line = text.decode("utf-8", errors="replace")
                lines.append(line.strip() if errors_only else line)
            return
    if _verbose:
        sys.stderr.write(text.decode("utf-8", errors="replace"))


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    try:
        _log(level, text)
    except KeyboardInterrupt:  # Ctrl+C landed in here: ctypes would print it and drop it, so it is
        # sent again from another thread, to be raised in the main thread's own code (should it land
        # in this callback again, the same happens until the C call returns)
        threading.Timer(0.01, _thread.interrupt_main).start()


def _install() -> None:
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def show_llama_log(verbose: bool) -> None:
    """Route llama.cpp's log through us: on stderr when ``verbose``, else nowhere."""
    global _verbose
    _verbose = verbose
    _install()


@contextmanager
def capture(errors_only: bool = False) -> Iterator[list[str]]:
    """Silence llama.cpp while the block runs; the list receives its log (each error line, stripped,
    with ``errors_only``)."""
    entry: tuple[list[str], bool] = ([], errors_only)
    _install()
    with _lock:
        _captures.append(entry)
    try:
        yield entry[0]
    finally:
        with _lock:
            _captures.remove(entry)


def capture_errors() -> contextlib.AbstractContextManager[list[str]]:
    return capture(errors_only=True)
