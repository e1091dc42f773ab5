"""Long llama.cpp calls that Ctrl+C can still stop: the call runs in a thread, the main thread waits.

Python runs a signal handler only between two bytecodes of the main thread. While the main thread
sits in a C call (loading a model, llama.cpp's quantizer) the only Python it runs is llama.cpp's
log callback, so a Ctrl+C landed there, where ctypes prints "Exception ignored" and drops it: the
command went on. Waiting in ``Thread.join`` instead, the main thread takes Ctrl+C at once; the
abandoned thread ends with the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from .log import show_llama_log

T = TypeVar("T")


def interruptible(fn: Callable[..., T], *args: object, name: str = "llama-cpp") -> T:
    """``fn(*args)`` in a daemon thread; its result or exception, or KeyboardInterrupt at once."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as e:  # handed to the main thread below
            failure.append(e)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
    except KeyboardInterrupt:
        show_llama_log(False)  # the abandoned call's log must not run on past "interrupted"
        raise
    if failure:
        raise failure[0]
    return result[0]
