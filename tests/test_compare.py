"""``expo-gguf compare``: the text figures by hand, KLD on SmolLM2 re-quantized from F32 (checked
against llama-cpp-python's own logits), the command end to end on the tiny GGUFs, bad inputs."""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import stat
import tempfile
from fnmatch import fnmatch
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import tomllib

import expo_gguf.measure.compare.run as compare_module
import expo_gguf.measure.divergence as divergence
from expo_gguf import RunOptions, load_model
from expo_gguf._fs import write_text_atomic
from expo_gguf.errors import ExpoError
from expo_gguf.measure.compare.metrics import Figures, crossings, distinct_n, repeated_ngram_rate, verdict
from expo_gguf.measure.compare.prompts import load_prompts, shipped_prompts
from expo_gguf.measure.compare.run import CompareOptions, Comparison, ModelRun, Reply, compare
from expo_gguf.measure.divergence import VocabInfo, check_same_vocab

from conftest import ROOT, make_family_pair, one_error_line, run_cli

pytestmark = pytest.mark.slow

LOOP = "The cat sat on the mat. " * 8
PARAGRAPH = (
    "Lisbon sits on seven hills above the Tagus estuary. Trams climb the steep streets of "
    "Alfama, where fado drifts from small taverns at night, and the riverside in Belem "
    "keeps a monastery, a tower and a famous custard-tart bakery."
)
PROMPTS = [
    "Name a colour.",
    {"id": "sum", "category": "maths", "prompt": "What is 2 + 3?"},
    {
        "id": "chat",
        "category": "multi-turn",
        "messages": [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada!"},
            {"role": "user", "content": "What is my name?"},
        ],
    },
]


def _run(texts: list[str], stops: list[str] | None = None) -> ModelRun:
    replies = tuple(Reply(t, len(t.split()), s, 1, 1.0) for t, s in zip(texts, stops or ["eog"] * len(texts)))
    return ModelRun(Path("m.gguf"), "m", "F32", 1, False, replies, None)


CODE = """def is_palindrome(s):
    return s == s[::-1]

print(is_palindrome("racecar"))
print(is_palindrome("hello"))
print(is_palindrome("level"))"""


def test_repetition_figures_by_hand() -> None:
    """LOOP is 8 x the 6 words "the cat sat on the mat" (the full stop is not a word) = 48 words:
    45 4-grams of which only the first 6 are new (39 repeats); 47 bigrams, 6 distinct. PARAGRAPH
    repeats no 4-gram; CODE's three print() lines repeat none either once brackets are not words."""
    assert repeated_ngram_rate([LOOP], 4) == pytest.approx(39 / 45)
    assert distinct_n([LOOP], 2) == pytest.approx(6 / 47)
    assert repeated_ngram_rate([PARAGRAPH], 4) == 0
    assert distinct_n([PARAGRAPH], 2) > 0.95
    assert repeated_ngram_rate([CODE], 4) == 0
    # repeats count within a reply only; distinct-2 is per reply, so more prompts do not lower it
    assert repeated_ngram_rate([PARAGRAPH, PARAGRAPH], 4) == 0
    assert distinct_n([PARAGRAPH] * 10, 2) == distinct_n([PARAGRAPH], 2)
    assert distinct_n([LOOP, PARAGRAPH], 2) == pytest.approx((6 / 47 + distinct_n([PARAGRAPH], 2)) / 2)
    assert repeated_ngram_rate(["too short"], 4) is None and distinct_n(["one"], 2) is None


def test_degenerate_model_gets_a_verdict_a_varied_one_does_not() -> None:
    loops = _run([LOOP, PARAGRAPH + " " + LOOP], ["max_tokens", "max_tokens"]).figures
    found = crossings(loops)
    assert [c.split(" ")[0] for c in found] == ["repeated", "distinct-2", "runaway"]
    assert "runaway 100.0 % > 20.0 %" in verdict(loops)
    fine = _run([PARAGRAPH, "Yes: blips are blops, so some are blups only if the overlap says so."]).figures
    assert fine.runaway == 0 and crossings(fine) == []
    assert verdict(fine) == "no figure crosses its threshold"


def test_with_a_reference_text_figures_are_judged_against_its_own() -> None:
    """A reference that loops as much as the model clears it; 5 points more repetition than the
    reference's, 0.05 less distinct-2 or 15 points more runaway flag it, whatever the level."""
    ref = Figures(25, 80, 300, distinct2=0.60, rep4=0.26, runaway=0.40, gen_tps=1)
    same = dataclasses.replace(ref, kld_mean=0.05)
    assert crossings(same, ref) == [] and len(crossings(same)) == 2  # fixed limits would flag it
    worse = dataclasses.replace(ref, distinct2=0.54, rep4=0.32, runaway=0.56, kld_mean=0.2)
    assert [c.split(" ")[0] for c in crossings(worse, ref)] == ["repeated", "distinct-2", "runaway", "mean"]
    assert "repeated 4-grams 32.0 % > 31.0 % (reference 26.0 % + 5 points: it repeats itself)" in verdict(worse, ref)
    assert "mean KLD 0.2 > 0.1 (distance from the reference: a loss for a quant" in verdict(worse, ref)
    low = Figures(25, 80, 300, distinct2=0.90, rep4=0.01, runaway=0.0, gen_tps=1)
    assert crossings(dataclasses.replace(low, rep4=0.07), low)[0].startswith("repeated 4-grams 7.0 % > 6.0 %")


def test_same_size_vocabularies_with_different_tokens_are_refused() -> None:
    ref = VocabInfo(Path("ref.gguf"), 3, (b"<s>", b"a", b"b"), 0, "F32")
    with pytest.raises(
        ExpoError, match=r"cand.gguf has a different vocabulary than ref.gguf \(token 2: b'c' vs b'b'\)"
    ):
        check_same_vocab(ref, VocabInfo(Path("cand.gguf"), 3, (b"<s>", b"a", b"c"), 0, "F32"))
    check_same_vocab(ref, dataclasses.replace(ref, path=Path("same.gguf")))


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
    write_text_atomic(out, "first\n")

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ExpoError, match="cannot write .*No space left"):
        write_text_atomic(out, "second\n")
    assert out.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["r.md"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "r.md", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.md").stat().st_mode) == mode


# -- KL divergence on SmolLM2 ------------------------------------------------------------------

OPTS = CompareOptions(RunOptions(n_ctx=512, threads=1), max_tokens=24)


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


def _direct_kld(q: dict[str, Path], prompt_ids: list[int], stop_ids: frozenset[int]) -> tuple[float, str, int]:
    """Independent of compare's batches and bookkeeping: llama-cpp-python's own greedy reply from
    F32 (its stop token kept) and logits_all scores of prompt + reply from F32 and Q4_0, KL summed
    in numpy. Returns the mean KLD, the reply's text and its number of positions."""
    scores, reply = {}, []
    for name in ("f32", "q4_0"):
        llm = llama_cpp.Llama(str(q[name]), n_ctx=512, logits_all=True, n_threads=1, verbose=False)
        try:
            if name == "f32":
                for token in llm.generate(prompt_ids, temp=0):
                    reply.append(token)
                    if token in stop_ids or len(reply) == OPTS.max_tokens:
                        break
                text = llm.detokenize([t for t in reply if t not in stop_ids]).decode()
                llm.reset()
            llm.eval(prompt_ids + reply)
            rows = np.array(llm.scores[len(prompt_ids) - 1 : len(prompt_ids) + len(reply) - 1], dtype=np.float64)
        finally:
            llm.close()
        top = rows.max(axis=1, keepdims=True)
        scores[name] = rows - top - np.log(np.exp(rows - top).sum(axis=1, keepdims=True))
    p = np.exp(scores["f32"])
    return float((p * (scores["f32"] - scores["q4_0"])).sum(1).mean()), text, len(reply)


@pytest.fixture(scope="module")
def direct(kl: Comparison, smollm2_quants: dict[str, Path]) -> list[tuple[float, str, int]]:
    session = load_model(smollm2_quants["f32"], RunOptions(n_ctx=512, threads=1))
    try:
        ids = [session.tokenize(list(p.messages)) for p in kl.prompts]
        stop_ids = session.stop_ids
    finally:
        session.close()
    return [_direct_kld(smollm2_quants, i, stop_ids) for i in ids]


def test_kld_matches_llama_cpp_python_directly(kl: Comparison, direct: list[tuple[float, str, int]]) -> None:
    """Every prompt, one reply ending on its stop token (that row scored too) and one cut at --max-tokens."""
    ref, q4 = kl.runs[0], kl.runs[3]
    assert {r.stop for r in ref.replies} == {"eog", "max_tokens"}
    for reply, mine, (kld, text, positions) in zip(ref.replies, q4.replies, direct):
        assert text.strip() == reply.text.strip()
        assert positions == reply.tokens + (reply.stop == "eog")
        assert mine.kld_mean == pytest.approx(kld, rel=1e-3)


def test_kld_across_batches_and_row_blocks(
    smollm2_quants: dict[str, Path],
    prompts_json: Path,
    direct: list[tuple[float, str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decoding in 7-token batches and log-softmax in 5-row blocks gives the direct figures too:
    each row lands at its own offset, whatever the cuts."""
    monkeypatch.setattr(divergence, "ROW_BLOCK", 5)
    forced = compare_module.forced_logits
    monkeypatch.setattr(
        compare_module, "forced_logits", lambda ctx, tokens, first, n_batch: forced(ctx, tokens, first, 7)
    )
    q = smollm2_quants
    c = compare([q["q4_0"]], q["f32"], prompts_json, OPTS)
    for mine, (kld, _, _) in zip(c.runs[1].replies, direct):
        assert mine.kld_mean == pytest.approx(kld, rel=1e-3)


def test_generation_speed_counts_the_decodes_llama_cpp_timed(kl: Comparison) -> None:
    """llama.cpp decodes every token of a reply that ends (the stop token is sampled from the last
    one's logits) and all but the last of one cut at --max-tokens."""
    for run in kl.runs:
        for r in run.replies:
            assert r.timed_tokens == r.tokens - (r.stop == "max_tokens")


# -- the command on the tiny GGUFs -------------------------------------------------------------


FAST = ("--max-tokens", "6", "--ctx", "256", "--threads", "1")


def _unmarkdown(md: str) -> str:
    """The report's text as a reader sees it: entities, escaped pipes and <br> undone."""
    return html.unescape(md.replace("<br>", "\n").replace("\\|", "|"))


def test_cli_end_to_end(
    built: dict[str, Path], prompts_json: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sized = []
    cache = compare_module.reference_cache

    def spy(rows: int, n_vocab: int, hint: str):  # noqa: ANN202
        sized.append(rows)
        return cache(rows, n_vocab, hint)

    monkeypatch.setattr(compare_module, "reference_cache", spy)
    report, js = tmp_path / "cmp.md", tmp_path / "cmp.json"
    res = run_cli(
        "compare",
        built["Q8_0"],
        built["Q4_K_M"],
        "--ref",
        built["F32"],
        "--prompts",
        prompts_json,
        *FAST,
        "--report",
        report,
        "--json",
        js,
    )
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    stems = [built[k].stem for k in ("F32", "Q8_0", "Q4_K_M")]
    assert [m["label"] for m in data["models"]] == [f"{stems[0]} (ref)", *stems[1:]]
    assert [m["type"] for m in data["models"]] == ["F32", "Q8_0", "Q4_K_M"]
    ids = [p["id"] for p in data["prompt_list"]]
    assert ids == ["1", "sum", "chat"]
    md = report.read_text()
    shown = _unmarkdown(md)
    ref_positions = sum(r["tokens"] + (r["stop"] == "eog") for r in data["models"][0]["replies"])
    assert sized == [ref_positions]  # the cache holds the reference's replies, not prompts x max-tokens
    for m in data["models"]:
        assert [r["prompt"] for r in m["replies"]] == ids
        assert (m["kld"] is None) == m["reference"]
        assert m["reference"] or m["kld"]["n"] == ref_positions
        assert all(0 < r["tokens"] <= 6 and (r["stop"] == "max_tokens") == (r["tokens"] == 6) for r in m["replies"])
        assert m["figures"]["runaway"] == pytest.approx(np.mean([r["stop"] == "max_tokens" for r in m["replies"]]))
        assert f"{m['label']}: {m['verdict']}" in res.output
        assert f"- `{m['label']}`: `{m['file']}`" in md
        for r in m["replies"]:
            assert r["text"].strip() in shown
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == ["## 1.", "## 2. sum (maths)", "## 3. chat (multi-turn)"]
    for p in data["prompt_list"]:
        assert p["messages"][-1]["content"] in md
    for col in ("distinct-2", "rep. 4-grams", "runaway", "mean KLD", "KLD p99", "gen tok/s"):
        assert col in res.output and col in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.json", "cmp.md"]  # no temporaries left


def test_one_model_at_a_time_and_the_progress_adds_up(
    built: dict[str, Path], prompts_json: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load, open_now, most, ticks = compare_module.load_model, [0], [0], []

    def counted(*args: object, **kwargs: object):  # noqa: ANN202
        session = load(*args, **kwargs)
        close = session.close
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])

        def closed() -> None:
            open_now[0] -= 1
            close()

        session.close = closed
        return session

    monkeypatch.setattr(compare_module, "load_model", counted)
    opts = CompareOptions(RunOptions(n_ctx=256, threads=1), max_tokens=4)
    totals: list[float] = []

    class Counted:
        def task(self, description: str, total: float | None = None) -> None:
            if total is not None:
                totals.append(total)

        def advance(self, n: float = 1) -> None:
            ticks.append(n)

        def note(self, text: str) -> None:
            pass

    compare([built["Q8_0"], built["Q4_0"]], built["F32"], prompts_json, opts, progress=Counted())
    assert most[0] == 1 and open_now[0] == 0
    assert set(totals) == {3 * 3 * 2}  # models x prompts x (generation, KLD)
    assert sum(ticks) == 3 * 3 * 2


def test_ctrl_c_mid_run_leaves_no_report_and_no_temporary(
    built: dict[str, Path], prompts_json: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "against", interrupt)  # the first KLD row of the first candidate
    out = tmp_path / "out"
    out.mkdir()
    res = run_cli(
        "compare",
        built["Q8_0"],
        "--ref",
        built["F32"],
        "--prompts",
        prompts_json,
        *FAST,
        "--report",
        out / "r.md",
        "--json",
        out / "r.json",
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and list(out.iterdir()) == []


def test_without_ref_vocabularies_may_differ(built: dict[str, Path], zephyr_q8: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi.\n")
    res = run_cli("compare", built["Q8_0"], zephyr_q8, "--prompts", prompts, *FAST)
    assert res.exit_code == 0, res.output
    assert "KLD" not in res.output and zephyr_q8.stem in res.output


@pytest.fixture(scope="module")
def zephyr_q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of another family: 32002 tokens against the Starling-shaped tiny model's 32000."""
    out = tmp_path_factory.mktemp("zephyr")
    pair = make_family_pair(out, "zephyr")
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--quant", "q8_0", "--outdir", out / "m")
    assert res.exit_code == 0, res.output
    return next((out / "m").glob("*.gguf"))


def test_warnings_once_per_model_and_the_trained_length(built: dict[str, Path], prompts_json: Path) -> None:
    """The tiny models are trained for 2048 tokens: --ctx 4096 is capped, said once per model; a
    reply that cannot fit even then is refused before any model loads, naming the trained length."""
    q8, q4 = built["Q8_0"], built["Q4_0"]
    res = run_cli("compare", q8, q4, "--prompts", prompts_json, "--ctx", "4096", "--max-tokens", "2", "--threads", "1")
    assert res.exit_code == 0, res.output
    for path in (q8, q4):
        assert res.output.count(f"warning: {path.stem}: --ctx 4096 is above the trained length; using 2048") == 1
    res = run_cli("compare", q8, "--prompts", prompts_json, "--ctx", "4096", "--max-tokens", "2100")
    one_error_line(res, "above the model's trained length 2048; lower --max-tokens")
    got = re.search(
        rf"prompt 1 is (\d+) tokens for {re.escape(q8.name)}: with --max-tokens 2100 it needs a "
        r"context of (\d+),",
        res.output,
    )
    assert got and int(got.group(2)) == int(got.group(1)) + 2100


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[]", "holds no prompts"),
        ("[1,", "invalid JSON (Expecting value at line 1, column 4)"),
        ('{"prompt": "x"}', "is not a prompt list"),
        ('[{"messages": [{"role": "bot", "content": "x"}]}]', "prompt 1: message 0 has role 'bot'"),
        (
            '["ok", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]',
            "prompt 2: the last message is the assistant's; it must be the user's",
        ),
        ('[{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}]', "prompt id 'x' is used more than once"),
        ('[{"prompt": "   "}]', "prompt 1: the user's message is empty"),
        ('[{"question": "x"}]', 'prompt 1 needs exactly one of "prompt" or "messages"'),
    ],
)
def test_bad_prompt_files(built: dict[str, Path], tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    one_error_line(run_cli("compare", built["Q8_0"], "--prompts", path), expected)


def test_bad_inputs(
    built: dict[str, Path], zephyr_q8: Path, prompts_json: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q8 = built["Q8_0"]
    one_error_line(run_cli("compare", q8, tmp_path / "missing.gguf"), "no such file")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    one_error_line(run_cli("compare", q8, "--ref", not_gguf), "is not a GGUF file")
    one_error_line(run_cli("compare", q8, "--ref", zephyr_q8), "has a different vocabulary than")
    one_error_line(run_cli("compare", q8, "--prompts", tmp_path / "none.txt"), "cannot read")
    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing but a comment\n\n")
    one_error_line(run_cli("compare", q8, "--prompts", comments), "holds no prompts")
    one_error_line(run_cli("compare", q8, "--report", tmp_path / "no" / "r.md"), "no such folder")

    def never(*_: object) -> None:
        raise AssertionError("a model was loaded before every input was checked")

    monkeypatch.setattr(compare_module, "load_model", never)
    report = tmp_path / "r.md"
    one_error_line(
        run_cli(
            "compare",
            built["F32"],
            q8,
            "--prompts",
            prompts_json,
            "--max-tokens",
            "250",
            "--ctx",
            "256",
            "--report",
            report,
        ),
        "with --max-tokens 250 it needs --ctx 270 (now 256)",
    )
    assert not report.exists()
    res = run_cli("compare")
    assert res.exit_code == 2 and "Missing argument 'MODELS...'" in res.output


def test_an_output_that_is_an_input_is_refused(
    built: dict[str, Path], prompts_json: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = prompts_json.read_bytes(), built["Q8_0"].stat().st_mtime_ns
    monkeypatch.chdir(prompts_json.parent)
    one_error_line(
        run_cli("compare", built["Q8_0"], "--prompts", prompts_json, "--json", "./prompts.json"),
        "--json prompts.json is an input; give another file name",
    )
    one_error_line(run_cli("compare", built["Q8_0"], "--report", built["Q8_0"]), "is an input")
    link = tmp_path / "link.gguf"
    link.symlink_to(built["F32"])
    one_error_line(run_cli("compare", built["Q8_0"], "--ref", built["F32"], "--json", link), "is an input")
    one_error_line(
        run_cli("compare", built["Q8_0"], "--report", tmp_path / "x.md", "--json", tmp_path / "x.md"),
        "--json {} is also --report".format(tmp_path / "x.md"),
    )
    assert (prompts_json.read_bytes(), built["Q8_0"].stat().st_mtime_ns) == before
