"""``expo-gguf quantize`` as a new user meets it on SmolLM2's Q4_1, which lives in an installed
package's folder: the default name, where it goes, the lossier-source warning, ``-o DIR/`` and the
Modelfile beside it (issue 17)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from expo_gguf.gguf_file.header import read_gguf_header

from conftest import one_error_line, run_cli, smollm2

pytestmark = pytest.mark.slow


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _file_type(path: Path) -> int:
    return int(read_gguf_header(path).values["general.file_type"])


def test_default_output_from_an_installed_package(tmp_path, monkeypatch):
    """X.Q4_1.gguf -> X.Q8_0.gguf, into the current directory (not the package's folder), with a
    warning that Q4_1 is lossier than Q8_0 and a Modelfile beside the result."""
    import gguf

    src = smollm2()
    assert src.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    package = _listing(src.parent)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    res = run_cli("quantize", src, "-q", "q8_0")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: SmolLM2-135M-Instruct.Q4_1.gguf is Q4_1 (5 bits per weight), lossier than Q8_0 (8.5)" in text
    assert (
        "is an installed package's folder: writing SmolLM2-135M-Instruct.Q8_0.gguf into the current directory" in text
    )
    assert _listing(here) == ["SmolLM2-135M-Instruct.Q8_0.Modelfile", "SmolLM2-135M-Instruct.Q8_0.gguf"]
    assert _listing(src.parent) == package
    assert _file_type(here / "SmolLM2-135M-Instruct.Q8_0.gguf") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert "FROM ./SmolLM2-135M-Instruct.Q8_0.gguf" in (here / "SmolLM2-135M-Instruct.Q8_0.Modelfile").read_text()

    # into a folder given as DIR/ (made if missing), from Q8_0 down to Q4_0: no warning
    res = run_cli("quantize", here / "SmolLM2-135M-Instruct.Q8_0.gguf", "-q", "q4_0", "-o", f"{tmp_path / 'out'}/")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output
    assert _listing(tmp_path / "out") == ["SmolLM2-135M-Instruct.Q4_0.Modelfile", "SmolLM2-135M-Instruct.Q4_0.gguf"]
    assert _file_type(tmp_path / "out" / "SmolLM2-135M-Instruct.Q4_0.gguf") == gguf.LlamaFileType.MOSTLY_Q4_0
    one_error_line(
        run_cli("quantize", here / "SmolLM2-135M-Instruct.Q8_0.gguf", "-q", "q4_0", "-o", tmp_path / "out"),
        "SmolLM2-135M-Instruct.Q4_0.gguf exists; use --force",
    )


def test_source_in_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    """A read-only file system (a tmpfs remounted read-only; needs root): the default output goes
    into the current directory, a dash-separated suffix replaced."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copyfile(smollm2(), mnt / "smol-Q4_1.gguf")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        monkeypatch.chdir(tmp_path)
        res = run_cli("quantize", mnt / "smol-Q4_1.gguf", "-q", "q5_1")
        assert res.exit_code == 0, res.output
        assert f"{mnt} is not writable (a read-only file system): writing smol-Q5_1.gguf" in " ".join(
            res.output.split()
        )
        assert (tmp_path / "smol-Q5_1.gguf").is_file() and (tmp_path / "smol-Q5_1.Modelfile").is_file()
        one_error_line(run_cli("quantize", mnt / "smol-Q4_1.gguf", "-q", "q5_1", "-o", mnt / "x.gguf"), "not writable")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_dry_run_prints_every_tensor_then_fails_where_the_run_would(tmp_path):
    """Issue 26, as --help promises: per tensor its name, shape, type and size (tab-separated when
    piped), then the total; an output that exists is refused after the plan, as build --dry-run does."""
    import gguf

    src = smollm2()
    out = tmp_path / "x.gguf"
    res = run_cli("quantize", src, "-q", "q4_k_m", "-o", out, "--dry-run")
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.output.splitlines() if "\t" in line]
    tensors = gguf.GGUFReader(src).tensors
    assert [r[0] for r in rows] == [t.name for t in tensors]
    for (_, shape, qtype, size), t in zip(rows, tensors, strict=True):
        assert shape == " x ".join(str(int(d)) for d in t.shape)
        block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
        expected = int(t.n_elements) // block * nbytes
        value, unit = size.split()
        scale = {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
        assert float(value) == pytest.approx(expected / scale, abs=0.051), (t.name, size)
        if len(t.shape) == 1 or t.shape[1] == 1:
            assert qtype == "F32", t.name  # norms stay F32
    assert {"Q4_K", "Q6_K"} <= {r[2] for r in rows}  # Q4_K_M's mix, as llama.cpp decides it
    assert f"{out}  Q4_K_M" in res.output and f"in {len(tensors)} tensors: " in " ".join(res.output.split())
    assert not out.exists()

    out.write_bytes(b"mine")
    res = run_cli("quantize", src, "-q", "q4_k_m", "-o", out, "--dry-run")
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len([line for line in lines if "\t" in line]) == len(tensors)  # the plan first
    assert lines[-1] == f"error: {out} exists; use --force to overwrite" and res.output.count("error:") == 1
    assert out.read_bytes() == b"mine"
    one_error_line(run_cli("quantize", src, "-q", "q4_k_m", "-o", out), "exists; use --force")


@pytest.mark.slow
@pytest.mark.parametrize("args", [("-q", "q4_0"), ("-q", "q4_k_m"), ("-q", "q4_k_m", "--tensor-type", "attn_v=q8_0")])
def test_dry_run_total_is_the_written_size(tmp_path, args):
    """The dry run's total is the file's size to the byte: the header and each tensor's padding too."""
    from expo_gguf.quant.llama import parse_overrides
    from expo_gguf.quant.requantize import dry_run_job, file_size_of, plan_requantize
    from expo_gguf.quant.types import parse_quants

    src, out = smollm2(), tmp_path / "x.gguf"
    assert run_cli("quantize", src, *args, "-o", out).exit_code == 0
    tensor_types = tuple(args[3:4])
    job = plan_requantize(
        src,
        parse_quants(args[1])[0],
        str(tmp_path / "y.gguf"),
        False,
        overrides=parse_overrides(None, None, tensor_types, False),
    )
    assert file_size_of(src, dry_run_job(job, 2).types) == out.stat().st_size
