"""How sizes and model names are printed, in one place for every command."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def human_bytes(n: int) -> str:
    """GB above 100 MB, MB below: the units `ls -lh` users and model cards use (decimal)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 token``, ``2 tokens``: a count and its noun, singular for exactly one."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def distinct_names(names: list[str]) -> list[str]:
    """``names`` with repeats numbered (``x``, ``x #2``), so columns and labels tell models apart."""
    return [n if names[:i].count(n) == 0 else f"{n} #{names[:i].count(n) + 1}" for i, n in enumerate(names)]


def file_labels(paths: Sequence[Path]) -> list[str]:
    """File stems, numbered when two are the same name: the column and reply labels of compare and chat --vs."""
    return distinct_names([Path(p).stem for p in paths])
