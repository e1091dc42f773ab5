"""A shortened soak (``scripts/soak_chat.py``, 20 turns): the long-session properties, kept in
the suite so a change that leaks memory or breaks trimming fails here, not after hours of chat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import smollm2

pytestmark = [pytest.mark.slow, pytest.mark.pty]

ROOT = Path(__file__).resolve().parents[1]


def test_twenty_turn_soak_holds() -> None:
    smollm2()  # skips without the model
    # The context first fills around turn 11; RSS is compared from turn 14, after the KV cache
    # pages of a full context have been touched once.
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak_chat.py"), "--turns", "20", "--rss-turn", "14"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all properties hold" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
