"""What `build` and `presets` print: whole names and hashes at 80 columns, tab-separated lines when
piped, `--json`; planned sizes that are the written sizes; the offline hint; plurals; and no
folder left behind by a build that failed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Pair, run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _build(pair: Pair, out: Path, *args: str):  # noqa: ANN202
    return run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", out, *args)


def _on_terminal(*args: str | Path) -> str:
    """The CLI as an 80-column terminal shows it (rich takes TTY_COMPATIBLE as a terminal)."""
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "80", "LINES": "40"}
    res = subprocess.run(
        [sys.executable, "-m", "expo_gguf", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    return ANSI.sub("", res.stdout)


def _json(res) -> dict:  # noqa: ANN001
    return json.loads(res.stdout)


def test_plan_at_80_columns_breaks_no_name(pair, tmp_path):
    name = "A-Rather-Long-Model-Name-For-An-Eighty-Column-Terminal"
    shown = _on_terminal(
        "build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", tmp_path, "-q", "q8_0,q4_k_m", "--alpha", "0.3",
        "--name", name, "--dry-run",
    )  # fmt: skip
    lines = shown.splitlines()
    for file in (f"{name}-Q8_0.gguf", f".{name}-BF16.intermediate.gguf", f"{name}-Q4_K_M.gguf"):
        assert any(file in line for line in lines), shown
    assert any(str(pair.rlhf) in line for line in lines), shown
    # no line longer than the terminal (a name too long for it is the only exception), wrapped between words
    assert all(len(line) <= 80 or len(line.split()) == 1 for line in lines), shown
    assert any(line.startswith("    ") and "in bf16)" in line for line in lines), shown  # the math line, wrapped


def test_plan_and_built_files_piped_are_tab_separated(pair, tmp_path):
    res = _build(pair, tmp_path, "-q", "q8_0,f16")
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.stdout.splitlines() if "\t" in line]
    planned = [r for r in rows if len(r) == 3]
    built = [r for r in rows if len(r) == 5]
    assert [r[0] for r in planned] == [r[0] for r in built] == [p.name for p in _outputs(tmp_path)]
    for file, quant, size, seconds, sha in built:
        data = (tmp_path / file).read_bytes()
        assert sha == hashlib.sha256(data).hexdigest() and file.endswith(f"-{quant}.gguf")
        assert float(seconds) >= 0 and size.endswith("MB")


def _outputs(folder: Path) -> list[Path]:
    order = {"Q8_0": 0, "F16": 1}
    return sorted(folder.glob("*.gguf"), key=lambda p: order[p.stem.rsplit("-", 1)[1]])


def test_json_describes_the_files_written(pair, tmp_path):
    res = _build(pair, tmp_path, "-q", "q8_0,q4_k_m", "--alpha", "0.3,0.5", "--json")
    assert res.exit_code == 0, res.output
    summary = _json(res)  # stdout is the JSON alone: the plan and notes went to stderr
    assert summary["alphas"] == [0.3, 0.5] and summary["seconds"] > 0
    files = summary["files"]
    assert sorted(Path(f["path"]) for f in files) == sorted(tmp_path.glob("*.gguf")) and len(files) == 4
    for f in files:
        data = Path(f["path"]).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
        assert f"-a{f['alpha']:g}-{f['quant']}.gguf" in f["path"] and f["seconds"] >= 0


@pytest.mark.parametrize("overrides", [(), ("--tensor-type", "attn_q=q4_0")])
def test_planned_sizes_are_the_written_sizes(pair, tmp_path, overrides):
    args = ("-q", "f32,f16,bf16,q8_0,q4_k_m", *overrides)
    res = _build(pair, tmp_path, *args, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    planned = {Path(o["path"]).name: o for o in _json(res)["outputs"] if not o["temporary"]}
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # --dry-run --json writes nothing
    res = _build(pair, tmp_path, *args, "--json")
    assert res.exit_code == 0, res.output
    written = {Path(f["path"]).name: f["bytes"] for f in _json(res)["files"]}
    assert written == {n: (tmp_path / n).stat().st_size for n in written}
    assert {n: o["bytes"] for n, o in planned.items()} == written
    assert not any(o["estimate"] for o in planned.values())
    if overrides:  # Q8_0 with overrides is llama.cpp's: still exact
        assert planned["Starling-LM-7B-beta-ExPO-Q8_0.gguf"]["written_by"] == "llama.cpp"


def test_presets_piped_one_line_each(pair):
    rows = json.loads((ROOT / "expo_gguf" / "data" / "presets.json").read_text())["presets"]
    res = run_cli("presets")
    assert res.exit_code == 0, res.output
    lines = [line.split("\t") for line in res.stdout.splitlines()]
    assert [line[0] for line in lines] == [r["name"] for r in rows]
    assert len(rows) >= 6
    for line, row in zip(lines, rows):
        assert line[1:4] == [f"{row['alpha']:g}", row["sft"], row["rlhf"]] and line[5] == row["source"]
        assert line[4] == f"{row['rlhf'].split('/')[-1]}-ExPO-QUANT.gguf"
        assert row["source"].startswith("https://huggingface.co/")
    assert lines[0][6] == "default" and all(line[6] == "" for line in lines[1:])
    assert [line[7] == "card" for line in lines] == [bool(row.get("chat_template")) for row in rows]  # tulu's


def test_presets_at_80_columns_keep_every_item_on_its_line():
    rows = json.loads((ROOT / "expo_gguf" / "data" / "presets.json").read_text())["presets"]
    lines = _on_terminal("presets").splitlines()
    for row in rows:
        assert any(line.startswith(row["name"]) and f"alpha {row['alpha']:g}" in line for line in lines)
        for value in (row["sft"], row["rlhf"], row["source"], f"{row['rlhf'].split('/')[-1]}-ExPO-QUANT.gguf"):
            assert any(line.strip().endswith(value) for line in lines), value


def test_offline_hint_names_the_preset_or_both_repos(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    res = run_cli("build", "-q", "q8_0", "--outdir", tmp_path / "m")
    assert res.exit_code == 2, res.output
    assert "download the pair first with: expo-gguf download --preset starling-lm-7b-beta" in res.output
    assert "openchat/openchat-3.5-0106 and Nexusflow/Starling-LM-7B-beta" in res.output
    res = run_cli("build", "--sft", "org/sft-x", "--rlhf", "org/rlhf-y", "--outdir", tmp_path / "m")
    assert res.exit_code == 2 and "expo-gguf download org/sft-x org/rlhf-y" in res.output, res.output


def test_interrupted_build_removes_the_folders_it_created(pair, tmp_path, monkeypatch):
    from expo_gguf.convert import writer

    real = writer.GGUFStream.write
    calls = {"n": 0}

    def write(self, chunk):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, chunk)

    monkeypatch.setattr(writer.GGUFStream, "write", write)
    res = _build(pair, tmp_path / "new" / "models", "-q", "q8_0")
    assert res.exit_code == 130, res.output
    assert list(tmp_path.iterdir()) == []


def test_failed_build_keeps_a_folder_it_did_not_create_or_that_is_not_empty(pair, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    res = _build(pair, tmp_path / "mine" / "sub", "-q", "q8_0", "--alpha", "1e30")
    assert res.exit_code == 1, res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine", "notes.txt"]
    res = _build(pair, tmp_path / "other", "-q", "f16", "--alpha", "1e30")
    assert res.exit_code == 1 and not (tmp_path / "other").exists()


def test_counts_of_one_are_singular(pair, tmp_path):
    res = _build(pair, tmp_path, "-q", "q8_0", "--tensor-type", "token_embd=q8_0", "--threads", "1", "--dry-run")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "1 tensor (token_embd.weight)" in text and "1 thread," in text and "21 tensors" in text
    assert not re.search(r"\b1 (tensors|threads|layers|chunks)\b", res.output)
