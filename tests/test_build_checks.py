"""What a build is called, what --sft/--rlhf accept, and --dry-run as a check (issue 17)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from test_build_errors import assert_clean_failure

from expo_gguf.gguf_file.header import read_gguf_header

from conftest import Pair, one_error_line, run_cli, use_hf_cache

PUBLISHED = (
    "Starling-LM-7B-beta-ExPO"  # the default preset's model; the `pair` fixture's folders carry its repos' names
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(sft: Path | str, rlhf: Path | str, out: Path, *extra: str):  # noqa: ANN202
    return run_cli("build", "--sft", sft, "--rlhf", rlhf, "--outdir", out, *extra)


def _general_name(path: Path) -> str:
    return read_gguf_header(path).values["general.name"]


@pytest.mark.slow
def test_an_alpha_sweep_never_overwrites_the_published_file(pair, tmp_path):
    """Local folders of the preset's pair: its own alpha is the published model, every other alpha
    (the K-quant made from the intermediate too) carries its alpha in file and general.name."""
    out = tmp_path / "m"
    assert _build(pair.sft, pair.rlhf, out, "-q", "q8_0").exit_code == 0
    published = out / f"{PUBLISHED}-Q8_0.gguf"
    assert _general_name(published) == PUBLISHED
    before = _sha(published)
    for alpha in ("0.3", "0", "-1"):
        res = _build(pair.sft, pair.rlhf, out, "-q", "q8_0,q4_k_m", "--alpha", alpha, "--force")
        assert res.exit_code == 0, res.output
        for quant in ("Q8_0", "Q4_K_M"):
            path = out / f"{PUBLISHED}-a{alpha}-{quant}.gguf"
            assert _general_name(path) == f"{PUBLISHED}-a{alpha}", (alpha, quant)
            assert read_gguf_header(path).values["expo.alpha"] == pytest.approx(float(alpha))
    assert _sha(published) == before
    assert sorted(p.name for p in out.glob("*.gguf")) == sorted(
        [f"{PUBLISHED}-Q8_0.gguf"]
        + [f"{PUBLISHED}-a{a}-{q}.gguf" for a in ("0.3", "0", "-1") for q in ("Q8_0", "Q4_K_M")]
    )


def test_the_published_name_only_for_the_preset_pair_at_its_alpha(pair, tmp_path, monkeypatch):
    """The same rule from repo ids in the HF cache and from local folders; another pair (folders
    named otherwise) carries its alpha even at the default one."""
    use_hf_cache(
        tmp_path / "hub",
        monkeypatch,
        {"Nexusflow/Starling-LM-7B-beta": pair.rlhf, "openchat/openchat-3.5-0106": pair.sft},
    )
    other = Pair(
        Path(shutil.copytree(pair.sft, tmp_path / "my-sft")), Path(shutil.copytree(pair.rlhf, tmp_path / "my-dpo"))
    )
    cases = [
        ((), f"{PUBLISHED}-Q8_0.gguf"),  # the preset's repo ids and alpha
        (("--alpha", "0.5"), f"{PUBLISHED}-Q8_0.gguf"),
        (("--alpha", "0.3"), f"{PUBLISHED}-a0.3-Q8_0.gguf"),
        (("--alpha", "-1"), f"{PUBLISHED}-a-1-Q8_0.gguf"),
        (("--sft", pair.sft, "--rlhf", pair.rlhf, "--alpha", "0"), f"{PUBLISHED}-a0-Q8_0.gguf"),
        (("--sft", other.sft, "--rlhf", other.rlhf), "my-dpo-ExPO-a0.5-Q8_0.gguf"),
        (("--sft", other.sft, "--rlhf", pair.rlhf), f"{PUBLISHED}-a0.5-Q8_0.gguf"),  # not the published SFT
        (("--alpha", "0.3", "--name", "mine"), "mine-Q8_0.gguf"),
    ]
    for extra, name in cases:
        res = run_cli("build", "-q", "q8_0", "--outdir", tmp_path / "m", "--dry-run", *extra)
        assert res.exit_code == 0, (extra, res.output)
        files = [w for w in res.output.split() if w.endswith(".gguf")]
        assert files == [name], (extra, res.output)
        assert res.output.startswith(name.removesuffix("-Q8_0.gguf") + "  alpha="), res.output  # the model's name


def test_a_gguf_or_a_file_is_not_a_checkpoint(pair, tmp_path):
    gguf_file = tmp_path / "Starling-Q8_0.gguf"
    gguf_file.write_bytes(b"GGUF\x03\x00\x00\x00")
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(b"GGUF\x03\x00\x00\x00")
    out = tmp_path / "m"
    for sft, rlhf, needle in (
        (gguf_file, pair.rlhf, f"{gguf_file} is a GGUF file; --sft takes a Hugging Face checkpoint folder or repo id"),
        (pair.sft, renamed, f"{renamed} is a GGUF file; --rlhf takes a Hugging Face checkpoint folder or repo id"),
        (pair.sft, "models/missing.gguf", "--rlhf takes a Hugging Face checkpoint folder or repo id, not a GGUF"),
        (
            pair.sft,
            pair.rlhf / "config.json",
            f"{pair.rlhf / 'config.json'} is a file in a checkpoint; --rlhf takes its folder: {pair.rlhf}",
        ),
        (pair.sft / "model.safetensors.index.json", pair.rlhf, f"--sft takes its folder: {pair.sft}"),
    ):
        res = _build(sft, rlhf, out, "-q", "q8_0")
        one_error_line(res, needle)
        assert not out.exists()


def test_the_same_checkpoint_twice_is_refused(pair, tmp_path, monkeypatch):
    """By path, and by files: a repo id whose cached blobs are the very files of the other folder."""
    use_hf_cache(tmp_path / "hub", monkeypatch, {"Nexusflow/Starling-LM-7B-beta": pair.rlhf})
    out = tmp_path / "m"
    for sft in (
        pair.rlhf,
        pair.rlhf.parent / ".." / pair.rlhf.parent.name / pair.rlhf.name,
        "Nexusflow/Starling-LM-7B-beta",
    ):
        res = _build(sft, pair.rlhf, out, "-q", "q8_0", "--dry-run")
        one_error_line(res, "SFT and RLHF are the same checkpoint")
        assert "the result would be the RLHF model" in res.output and not out.exists()


def test_dry_run_prints_the_whole_plan_when_outputs_exist(pair, tmp_path):
    """A check: every file listed, existing ones marked; it fails as the build would, after the
    plan; with --force it passes and says what will be replaced."""
    out = tmp_path / "m"
    out.mkdir()
    (out / f"{PUBLISHED}-Q8_0.gguf").write_bytes(b"precious")
    res = _build(pair.sft, pair.rlhf, out, "-q", "q8_0,q4_k_m", "--dry-run")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert f"{PUBLISHED}-Q8_0.gguf exists, --force to replace" in text
    assert "21 tensors" in text and "disk: needs" in text
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "use --force to overwrite" in errors[0]
    assert res.output.rstrip().splitlines()[-1] == errors[0]  # after the plan
    res = _build(pair.sft, pair.rlhf, out, "-q", "q8_0,q4_k_m", "--dry-run", "--force")
    assert res.exit_code == 0, res.output
    assert "Q8_0.gguf exists, replaced (--force)" in " ".join(res.output.split())
    assert (out / f"{PUBLISHED}-Q8_0.gguf").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == [f"{PUBLISHED}-Q8_0.gguf"]


def test_an_output_folder_that_cannot_be_written(pair, tmp_path):
    """Under a regular file, and on a read-only file system (a read-only tmpfs; needs root): the
    dry run says so after the plan, the build refuses before writing."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = _build(pair.sft, pair.rlhf, blocker / "models", "-q", "q8_0", "--dry-run")
    assert res.exit_code == 2 and "21 tensors" in res.output, res.output
    assert f"error: cannot write into {blocker / 'models'}: {blocker} is not a folder" in " ".join(res.output.split())
    one_error_line(_build(pair.sft, pair.rlhf, blocker / "models", "-q", "q8_0"), f"{blocker} is not a folder")

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        res = _build(pair.sft, pair.rlhf, mnt / "models", "-q", "q8_0", "--dry-run")
        assert res.exit_code == 2 and "21 tensors" in res.output, res.output
        assert "is not writable (a read-only file system)" in " ".join(res.output.split())
        assert_clean_failure(_build(pair.sft, pair.rlhf, mnt, "-q", "q8_0"), mnt, f"cannot write into {mnt}", code=2)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
