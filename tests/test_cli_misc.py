"""Small CLI edges from issue 17: ``info --json``, ``compare --limit N`` and "did you mean" for a
misspelt command, quant or preset."""

from __future__ import annotations

import json

import gguf
import pytest

from conftest import ROOT, one_error_line, run_cli, smollm2


def test_info_json_agrees_with_gguf_py(tmp_path):
    """Every figure `info --json` prints, against gguf-py's own reader of the same file."""
    src = smollm2()
    res = run_cli("info", src, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    r = gguf.GGUFReader(src)

    def field(key: str):  # noqa: ANN202
        return r.get_field(key).contents()

    assert got["path"] == str(src) and got["bytes"] == src.stat().st_size
    assert got["architecture"] == field("general.architecture") == "llama"
    assert got["name"] == field("general.name")
    assert got["file_type"] == gguf.LlamaFileType(field("general.file_type")).name.removeprefix("MOSTLY_")
    assert got["n_tensors"] == len(r.tensors)
    counts: dict[str, int] = {}
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    assert got["tensor_types"] == counts
    assert got["context_length"] == field("llama.context_length")
    assert got["block_count"] == field("llama.block_count")
    tokens = field("tokenizer.ggml.tokens")
    assert got["n_vocab"] == len(tokens)
    bos = field("tokenizer.ggml.bos_token_id")
    assert got["special_tokens"]["bos"] == {"id": bos, "text": tokens[bos]}
    assert got["chat_template"] == field("tokenizer.chat_template")  # whole, however long
    assert got["ram_estimate"]["n_ctx"] == min(4096, got["context_length"])
    assert got["ram_estimate"]["bytes"] > got["bytes"]
    one_error_line(run_cli("info", tmp_path / "none.gguf", "--json"), "no such file")


@pytest.mark.slow
def test_compare_limit_runs_the_first_n_prompts(tmp_path):
    shipped = json.loads((ROOT / "expo_gguf" / "data" / "compare_prompts.json").read_text())
    out = tmp_path / "cmp.json"
    res = run_cli(
        "compare", smollm2(), "--limit", "2", "--max-tokens", "4", "--ctx", "512", "--threads", "1", "--json", out
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [p["id"] for p in data["prompt_list"]] == [p["id"] for p in shipped[:2]]
    assert [x["prompt"] for x in data["models"][0]["replies"]] == [p["id"] for p in shipped[:2]]
    assert data["prompts"] == "built-in prompts, the first 2"
    assert "2 prompts (built-in prompts, the first 2)" in " ".join(res.output.split())
    res = run_cli("compare", smollm2(), "--limit", "1", "--max-tokens", "1", "--ctx", "512", "--threads", "1")
    assert res.exit_code == 0 and "1 prompt (built-in prompts, the first 1), greedy, up to 1 token" in " ".join(
        res.output.split()
    ), res.output  # singular counts (issue 26)
    res = run_cli("compare", smollm2(), "--limit", "0")
    assert res.exit_code == 2 and "--limit" in res.output


def test_did_you_mean(tmp_path):
    res = run_cli("biuld")
    assert res.exit_code == 2 and "No such command 'biuld'. Did you mean 'build'?" in res.output, res.output
    one_error_line(run_cli("quantize", tmp_path / "x.gguf", "-q", "q4km"), "unknown quant q4km (did you mean q4_k_m?)")
    one_error_line(run_cli("build", "-q", "Q8", "--dry-run"), "unknown quant q8 (did you mean q8_0?)")
    one_error_line(
        run_cli("build", "--preset", "zephyr-beta", "--dry-run"),
        "no preset 'zephyr-beta' (did you mean zephyr-7b-beta?)",
    )
    one_error_line(run_cli("build", "-q", "xyz", "--dry-run"), "unknown quant xyz; choose from: f32")  # nothing close


def test_info_piped_and_on_an_80_column_terminal(monkeypatch):
    """Issue 26: piped, `key<TAB>value` lines with no trailing whitespace; on a terminal, keys in a
    column and each value beside its key."""
    import io

    from rich.console import Console

    from expo_gguf.cli import gguf as command

    src = smollm2()
    res = run_cli("info", src)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert all(line == line.rstrip() for line in lines), [line for line in lines if line != line.rstrip()]
    fields = dict(line.split("\t", 1) for line in lines if "\t" in line)
    assert fields["architecture"] == "llama" and fields["file type"] == "Q4_1"
    assert fields["file"].startswith(f"{src}  (") and fields["tensors"].startswith("272: ")

    buf = io.StringIO()
    monkeypatch.setattr(command, "console", Console(file=buf, force_terminal=True, width=80, color_system=None))
    assert run_cli("info", src).exit_code == 0
    shown = buf.getvalue().splitlines()
    starts = set()
    for key, value in (("architecture", "llama"), ("file type", "Q4_1"), ("context length", "8192")):
        (line,) = [line for line in shown if line.startswith(key + " ")]
        assert line[len(key) :].strip() == value, line
        starts.add(line.index(value, len(key)))
    assert len(starts) == 1, shown  # values in one column
    assert "\t" not in buf.getvalue()
