"""``expo-gguf compare``: the text figures by hand, KLD on SmolLM2 re-quantized from F32 (checked
against llama-cpp-python's own logits), the command end to end on the tiny GGUFs, bad inputs."""

from __future__ import annotations

import html
import json
import os
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from conftest import ROOT, run_cli, smollm2

from expo_gguf.compare import Comparison, CompareOptions, ModelRun, Reply, compare
from expo_gguf.compare_metrics import crossings, distinct_n, repeated_ngram_rate, verdict
from expo_gguf.compare_prompts import load_prompts, shipped_prompts
from expo_gguf.compare_report import write_atomic
from expo_gguf.errors import ExpoError
from expo_gguf.loader import LoadOptions, load_model

LOOP = "The cat sat on the mat. " * 8
PARAGRAPH = ("Lisbon sits on seven hills above the Tagus estuary. Trams climb the steep streets of "
             "Alfama, where fado drifts from small taverns at night, and the riverside in Belem "
             "keeps a monastery, a tower and a famous custard-tart bakery.")
PROMPTS = [
    "Name a colour.",
    {"id": "sum", "category": "maths", "prompt": "What is 2 + 3?"},
    {"id": "chat", "category": "multi-turn", "messages": [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "What is my name?"}]},
]


def _run(texts: list[str], stops: list[str] | None = None) -> ModelRun:
    replies = tuple(Reply(t, len(t.split()), s, 1, 1.0)
                    for t, s in zip(texts, stops or ["eog"] * len(texts)))
    return ModelRun(Path("m.gguf"), "m", "F32", 1, False, replies, None)


def test_repetition_figures_by_hand() -> None:
    """LOOP is 8 x the 7 words "the cat sat on the mat ." = 56 words: 53 4-grams of which only the
    first 7 are new (46 repeats); 55 bigrams, 7 distinct. PARAGRAPH repeats no 4-gram."""
    assert repeated_ngram_rate([LOOP], 4) == pytest.approx(46 / 53)
    assert distinct_n([LOOP], 2) == pytest.approx(7 / 55)
    assert repeated_ngram_rate([PARAGRAPH], 4) == 0
    assert distinct_n([PARAGRAPH], 2) > 0.95
    # repeats count within a reply only; distinct-2 pools the replies
    assert repeated_ngram_rate([PARAGRAPH, PARAGRAPH], 4) == 0
    assert distinct_n([PARAGRAPH, PARAGRAPH], 2) == pytest.approx(distinct_n([PARAGRAPH], 2) / 2)
    assert repeated_ngram_rate(["too short"], 4) is None


def test_degenerate_model_gets_a_verdict_a_varied_one_does_not() -> None:
    loops = _run([LOOP, PARAGRAPH + " " + LOOP], ["max_tokens", "max_tokens"]).figures
    found = crossings(loops)
    assert [c.split(" ")[0] for c in found] == ["repeated", "distinct-2", "runaway"]
    assert "runaway 100 % > 20 %" in verdict(loops)
    fine = _run([PARAGRAPH, "Yes: blips are blops, so some are blups only if the overlap says so."]).figures
    assert fine.runaway == 0 and crossings(fine) == []
    assert verdict(fine) == "no figure crosses a threshold"


def test_prompt_files(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("# my prompts\nFirst question?\n\n  Second question?  \n")
    name, prompts = load_prompts(txt)
    assert name == str(txt) and [p.question for p in prompts] == ["First question?", "Second question?"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(PROMPTS))
    _, prompts = load_prompts(js)
    assert [p.id for p in prompts] == ["1", "sum", "chat"]
    assert [m["role"] for m in prompts[2].messages] == ["user", "assistant", "user"]
    name, shipped = shipped_prompts()
    assert len(shipped) == 25 and name == "built-in prompts"
    cats = {p.category for p in shipped}
    assert {"writing", "reasoning", "coding", "maths", "extraction", "multi-turn"} <= cats
    assert any(sum(m["role"] == "user" for m in p.messages) > 1 for p in shipped)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch("data/compare_prompts.json", glob) for glob in data["expo_gguf"])  # in the wheel


def test_report_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.md"
    write_atomic(out, "first\n")

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ExpoError, match="cannot write .*No space left"):
        write_atomic(out, "second\n")
    assert out.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["r.md"]


# -- KL divergence on SmolLM2 ------------------------------------------------------------------

OPTS = CompareOptions(max_tokens=24, n_ctx=512, threads=1)


@pytest.fixture(scope="module")
def prompts_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return path


@pytest.fixture(scope="module")
def kl(smollm2_quants: dict[str, Path], prompts_json: Path) -> Comparison:
    q = smollm2_quants
    return compare([q["f32"], q["q8_0"], q["q4_0"]], q["f32"], prompts_json, OPTS)


def test_kld_orders_quants_and_a_model_against_itself_is_zero(kl: Comparison) -> None:
    """Same file, same tokens, same batches, same threads: llama.cpp's CPU kernels give the same
    bits, both sides round the same float64 log-softmax to float32, so the sum is exactly 0."""
    ref, same, q8, q4 = kl.runs
    assert ref.is_reference and ref.kld is None and ref.label == "smollm2-F32 (ref)"
    assert same.kld is not None and q8.kld is not None and q4.kld is not None
    assert same.kld.mean == 0 and same.kld.max == 0 and same.kld.same_top_pct == 100
    assert [r.text for r in same.replies] == [r.text for r in ref.replies]
    assert q4.kld.mean > q8.kld.mean > 0
    assert q4.kld.p99 > q8.kld.p99 > 0
    # one position per reference reply token, its stop token included where it stopped
    assert q8.kld.n == sum(r.tokens + (r.stop == "eog") for r in ref.replies)


def test_kld_matches_llama_cpp_python_directly(kl: Comparison, smollm2_quants: dict[str, Path]) -> None:
    """Independent of compare's batches and bookkeeping: llama-cpp-python's own greedy reply and
    logits_all scores for the multi-turn prompt, KL summed in numpy."""
    q, prompt = smollm2_quants, kl.prompts[2]
    session = load_model(LoadOptions(model=q["f32"], n_ctx=512, threads=1))
    try:
        ids = session.tokenize(list(prompt.messages))
        stop_ids = session.stop_ids
    finally:
        session.close()
    scores = {}
    for name in ("f32", "q4_0"):
        llm = llama_cpp.Llama(str(q[name]), n_ctx=512, logits_all=True, n_threads=1, verbose=False)
        try:
            if name == "f32":
                reply = []
                for token in llm.generate(ids, temp=0):
                    reply.append(token)
                    if token in stop_ids or len(reply) == OPTS.max_tokens:
                        break
                text = llm.detokenize([t for t in reply if t not in stop_ids]).decode()
                assert text.strip() == kl.runs[0].replies[2].text.strip()
                llm.reset()
            llm.eval(ids + reply)
            rows = np.array(llm.scores[len(ids) - 1:len(ids) + len(reply) - 1], dtype=np.float64)
        finally:
            llm.close()
        top = rows.max(axis=1, keepdims=True)
        scores[name] = rows - top - np.log(np.exp(rows - top).sum(axis=1, keepdims=True))
    p = np.exp(scores["f32"])
    direct = float((p * (scores["f32"] - scores["q4_0"])).sum(1).mean())
    assert kl.runs[3].replies[2].kld_mean == pytest.approx(direct, rel=1e-3)


# -- the command on the tiny GGUFs -------------------------------------------------------------


def _one_error_line(res, expected: str) -> None:  # noqa: ANN001
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.output
    assert "Traceback" not in res.output


FAST = ("--max-tokens", "6", "--ctx", "256", "--threads", "1")


def test_cli_end_to_end(built: dict[str, Path], prompts_json: Path, tmp_path: Path) -> None:
    report, js = tmp_path / "cmp.md", tmp_path / "cmp.json"
    res = run_cli("compare", built["Q8_0"], built["Q4_K_M"], "--ref", built["F32"], "--prompts", prompts_json,
                  *FAST, "--report", report, "--json", js)
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    stems = [built[k].stem for k in ("F32", "Q8_0", "Q4_K_M")]
    assert [m["label"] for m in data["models"]] == [f"{stems[0]} (ref)", *stems[1:]]
    assert [m["type"] for m in data["models"]] == ["F32", "Q8_0", "Q4_K_M"]
    ids = [p["id"] for p in data["prompt_list"]]
    assert ids == ["1", "sum", "chat"]
    md = report.read_text()
    for m in data["models"]:
        assert [r["prompt"] for r in m["replies"]] == ids
        assert (m["kld"] is None) == m["reference"]
        assert all(0 < r["tokens"] <= 6 for r in m["replies"])
        assert f"{m['label']}: " in res.output  # its verdict line
        assert m["label"] in md
        for r in m["replies"]:
            assert html.escape(r["text"].strip(), quote=False).replace("|", "\\|").replace("\n", "<br>") in md
    for p in data["prompt_list"]:
        assert f"{p['id']}" in md and p["messages"][-1]["content"] in md
    for col in ("distinct-2", "rep. 4-grams", "runaway", "mean KLD", "KLD p99", "gen tok/s"):
        assert col in res.output and col in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.json", "cmp.md"]  # no temporaries left


def test_without_ref_vocabularies_may_differ(built: dict[str, Path], tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi.\n")
    res = run_cli("compare", built["Q8_0"], smollm2(), "--prompts", prompts, *FAST)
    assert res.exit_code == 0, res.output
    assert "KLD" not in res.output and smollm2().stem in res.output


@pytest.mark.parametrize("content, expected", [
    ("[]", "holds no prompts"),
    ("[1,", "invalid JSON (Expecting value at line 1, column 4)"),
    ('{"prompt": "x"}', "is not a prompt list"),
    ('[{"messages": [{"role": "bot", "content": "x"}]}]', "prompt 1: message 0 has role 'bot'"),
    ('["ok", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]',
     "prompt 2: the last message is the assistant's; it must be the user's"),
    ('[{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}]', "prompt id 'x' is used more than once"),
    ('[{"prompt": "   "}]', "prompt 1: the user's message is empty"),
    ('[{"question": "x"}]', 'prompt 1 needs exactly one of "prompt" or "messages"'),
])
def test_bad_prompt_files(built: dict[str, Path], tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    _one_error_line(run_cli("compare", built["Q8_0"], "--prompts", path), expected)


def test_bad_inputs(built: dict[str, Path], prompts_json: Path, tmp_path: Path) -> None:
    q8 = built["Q8_0"]
    _one_error_line(run_cli("compare", q8, tmp_path / "missing.gguf"), "no such file")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    _one_error_line(run_cli("compare", q8, "--ref", not_gguf), "is not a GGUF file")
    _one_error_line(run_cli("compare", q8, "--ref", smollm2()), "has a different vocabulary than")
    _one_error_line(run_cli("compare", q8, "--prompts", tmp_path / "none.txt"), "cannot read")
    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing but a comment\n\n")
    _one_error_line(run_cli("compare", q8, "--prompts", comments), "holds no prompts")
    _one_error_line(run_cli("compare", q8, "--report", tmp_path / "no" / "r.md"), "no such folder")
    report = tmp_path / "r.md"
    _one_error_line(run_cli("compare", q8, "--prompts", prompts_json, "--max-tokens", "250", "--ctx", "256",
                            "--report", report), "needs --ctx")
    assert not report.exists()
    res = run_cli("compare")
    assert res.exit_code == 2 and "Missing argument 'MODELS...'" in res.output
