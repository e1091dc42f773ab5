"""The one way long work reports progress: ``build``, ``eval``, ``compare`` and ``imatrix`` alike.

The library calls these methods; the CLI draws them (one rich bar on stderr), tests and Python
users pass nothing and get ``SILENT``. One bar at a time: ``task`` says what runs now and, once
known, how many units (bytes, chunks, prompts) the whole stage takes; ``task`` with a ``unit``
starts a new stage (a build's pass in bytes, then its importance matrix in chunks): a fresh bar
counting from zero in that unit, the finished one gone. ``advance`` counts units; ``note`` is a
line worth keeping above the bar (a file scored, a stage begun).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def task(self, description: str, total: float | None = None, unit: str | None = None) -> None:
        """What runs now; ``total``, when given, is how many units the whole stage takes; a ``unit``
        ("bytes", "chunks") starts a new stage counted in it, else the current one is relabelled."""

    def advance(self, n: float = 1) -> None:
        """``n`` more units are done."""

    def note(self, text: str) -> None:
        """A line for the user, printed above the bar."""


class _Silent:
    def task(self, description: str, total: float | None = None, unit: str | None = None) -> None:
        pass

    def advance(self, n: float = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


SILENT: Progress = _Silent()
