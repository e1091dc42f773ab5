"""Ctrl+C at any moment of ``expo-gguf chat``: while Python imports, while llama.cpp loads the
model, and inside llama.cpp's log callback. Each ends with one line and exit 130 (a signal sent to
a real process, as the terminal driver sends it)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, smollm2

pytestmark = pytest.mark.slow


def launch(*args: str | Path, script: bool = False) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("expo-gguf")
    head = [str(exe)] if script else [sys.executable, "-m", "expo_gguf"]
    return subprocess.Popen(
        [*head, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )


def mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def interrupted(proc: subprocess.Popen[bytes]) -> tuple[bytes, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return out, err.decode()


@pytest.mark.parametrize("script", [False, True], ids=["python -m", "script"])
def test_ctrl_c_during_imports(script: bool) -> None:
    """The moment numpy's or llama.cpp's libraries are mapped, the CLI is still importing."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see the imports happen")
    if script and not Path(sys.executable).with_name("expo-gguf").exists():
        pytest.skip("the expo-gguf script is not installed in this environment")
    proc = launch("chat", smollm2(), "-p", "hi", "--max-tokens", "4", script=script)
    deadline = time.monotonic() + 30
    while not (mapped(proc.pid, "libllama") or mapped(proc.pid, "numpy")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    out, err = interrupted(proc)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted"], err
    assert out == b""


def test_ctrl_c_while_the_model_loads() -> None:
    """Bug: it landed in the ctypes log callback ("Exception ignored ..."), and the chat went on."""
    proc = launch("chat", smollm2(), "-p", "Write a long story.", "--max-tokens", "400", "--verbose", "--threads", "1")
    assert proc.stderr is not None
    seen = b""
    while b"llama_model_loader" not in seen:  # llama.cpp has started reading the file
        line = proc.stderr.readline()
        assert line, seen.decode()[-2000:]
        seen += line
    out, err = interrupted(proc)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Exception ignored" not in err and "Traceback" not in err
    assert out == b""  # no reply


def test_ctrl_c_inside_the_log_callback_is_raised_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt raised while the callback runs (called from C) reaches the main thread
    once the callback has returned, instead of being printed and dropped by ctypes."""
    from expo_gguf.runtime import log

    class Interrupting:
        def write(self, text: str) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(log, "_verbose", True)
    monkeypatch.setattr(sys, "stderr", Interrupting())
    call_from_c = ctypes.cast(log._callback, ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p))
    with pytest.raises(KeyboardInterrupt):
        call_from_c(2, b"a log line\n", None)
        deadline = time.monotonic() + 10  # it is sent again from a timer thread, in 10 ms
        while time.monotonic() < deadline:
            time.sleep(0.01)
