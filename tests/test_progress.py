"""The one progress bar (``cli._output.RichProgress``) as a terminal shows it: a build's pass in
bytes, then ``--imatrix auto``'s chunks (issue 26). Each stage is a fresh bar in its own unit
(the chunk bar starts at 0 with a count and an ETA, never at 100% counting bytes), and nothing
stale is left on screen once the run is done."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pyte
import pytest
from rich.console import Console

from expo_gguf.cli import _output


@contextmanager
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """stderr as an 80-column terminal whose bytes are kept."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None, highlight=False)
    monkeypatch.setattr(_output, "err", console)
    yield buf


def screen(data: str) -> list[str]:
    """What an 80x24 terminal shows after ``data``: its non-empty lines."""
    s = pyte.Screen(80, 24)
    pyte.Stream(s).feed(data.replace("\n", "\r\n"))
    return [line.rstrip() for line in s.display if line.strip()]


def bar_line(rows: list[str], start: str) -> str:
    (line,) = [r for r in rows if r.startswith(start)]
    return line


def test_a_build_with_imatrix_auto_gets_a_fresh_bar_per_stage(monkeypatch):
    with terminal(monkeypatch) as buf, _output.progress("bytes", keep=True) as bar:
        bar.task("extrapolating", 2_000_000)  # as convert.execute reports the pass
        for _ in range(4):
            bar.advance(500_000)
        bar.bar.refresh()
        assert "2.0/2.0 MB" in bar_line(screen(buf.getvalue()), "extrapolating")

        bar.task("importance matrix: reading the text", unit="chunks")  # as cli.imatrix.auto_maker
        bar.note("--imatrix auto: computing the importance matrix of t")
        bar.task("imatrix over 4 chunks of 512", 4, unit="chunks")  # as measure.imatrix starts its count
        bar.bar.refresh()
        rows = screen(buf.getvalue())
        chunks = bar_line(rows, "imatrix")
        assert "0/4" in chunks and "%" not in chunks and "B" not in chunks, chunks  # a count, no bytes or percent
        for k in range(3):
            bar.advance(1)
            bar.task(f"imatrix {k + 1} chunks, PPL 9.99", 4)  # relabelled, still the same stage
        bar.bar.refresh()
        chunks = bar_line(screen(buf.getvalue()), "imatrix")
        assert "3/4" in chunks and "PPL 9.99" in chunks and ":" in chunks.split("3/4")[1], chunks  # and an ETA
        bar.advance(1)
        bar.note("importance matrix: 2,048 tokens in 1.0s -> t.imatrix.gguf")  # as measure.imatrix ends
        bar.note("llama.cpp quantize -> t-IQ2_XXS.gguf")  # then convert.execute: a stage with no count
        bar.task("llama.cpp quantize -> t-IQ2_XXS.gguf", unit="tensors")
    rows = screen(buf.getvalue())
    # kept: the pass's finished bar once, above the notes; a stage a note sums up, or one that only
    # pulsed, leaves no bar behind (issue 26: the finished imatrix bar came after the quantize line)
    assert [r.split()[0] for r in rows] == ["extrapolating", "--imatrix", "importance", "llama.cpp"], rows
    assert "100%" in rows[0] and "2.0/2.0 MB" in rows[0]
    assert "━" not in rows[-1], rows


def test_a_transient_bar_leaves_nothing_and_a_pipe_gets_no_bar(monkeypatch):
    with terminal(monkeypatch) as buf, _output.progress() as bar:  # quantize --imatrix auto, eval, compare
        bar.task("imatrix over 2 chunks of 512", 2, unit="chunks")
        bar.advance(2)
        bar.note("importance matrix: 1,024 tokens")
    assert screen(buf.getvalue()) == ["importance matrix: 1,024 tokens"]

    piped = io.StringIO()
    monkeypatch.setattr(_output, "err", Console(file=piped, force_terminal=False, highlight=False))
    with _output.progress("bytes", keep=True) as bar:
        bar.task("extrapolating", 10)
        bar.advance(10)
        bar.task("imatrix over 2 chunks of 512", 2, unit="chunks")
        bar.advance(2)
        bar.note("a note")
    assert piped.getvalue() == "a note\n"
