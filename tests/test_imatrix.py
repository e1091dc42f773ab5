"""The importance matrix: collected as llama-imatrix does (checked against transformers' own
activations), written in llama.cpp's format, and used by llama.cpp's quantizer; every refusal is
one line, exit 2, nothing written."""

from __future__ import annotations

import glob
import struct
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from expo_gguf.gguf_file.imatrix import read_imatrix, write_imatrix
from expo_gguf.quant.llama import dry_run
from expo_gguf.quant.types import QUANTS

from conftest import ROOT, one_error_line, run_cli, smollm2

TEXT = ROOT / "scripts" / "data" / "sample.txt"
CTX, CHUNKS = 64, 3
ALPHA = 0.5  # the default preset's, which the `built` fixture uses
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@pytest.fixture(scope="module")
def tiny_imatrix(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imatrix") / "tiny.imatrix.gguf"
    res = run_cli("imatrix", built["F32"], "--text", TEXT, "--ctx", CTX, "--chunks", CHUNKS, "-o", out)
    assert res.exit_code == 0, res.output
    return out


def _chunks(model: Path) -> np.ndarray:
    """The token chunks llama-imatrix runs: BOS + the text, cut in CTX, each chunk's first token BOS."""
    llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    ids = llm.tokenize(TEXT.read_bytes(), add_bos=True, special=False)
    chunks = np.array(ids[: CHUNKS * CTX]).reshape(CHUNKS, CTX)
    chunks[:, 0] = llm.token_bos()
    return chunks


@pytest.mark.slow
@pytest.mark.reference
def test_sums_equal_transformers_forward_hooks(pair, built, tiny_imatrix):
    """Each Linear's inputs in HF transformers, squared and summed per column over the same tokens,
    are the file's in_sum2 for the GGUF tensor of that Linear; counts are the tokens."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    r, s = {}, {}
    for f in glob.glob(f"{pair.rlhf}/*.safetensors"):
        r.update(load_file(f))
    for f in glob.glob(f"{pair.sft}/*.safetensors"):
        s.update(load_file(f))
    config = transformers.AutoConfig.from_pretrained(pair.rlhf)
    model = transformers.MistralForCausalLM(config).float().eval()
    # the build's default maths on this bf16 pair: the ExPO authors' bf16 expression (issue 19)
    model.load_state_dict({k: (r[k] + ALPHA * (r[k] - s[k])).float() for k in r})
    sums: dict[str, np.ndarray] = {}

    def hook(name: str):  # noqa: ANN202
        def record(module, inputs, output) -> None:  # noqa: ANN001
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0).numpy()

        return record

    for i, layer in enumerate(model.model.layers):
        for hf, ours in HF_TO_GGUF.items():
            layer.get_submodule(hf).register_forward_hook(hook(f"blk.{i}.{ours}.weight"))
    with torch.no_grad():
        for chunk in _chunks(built["F32"]):
            model(input_ids=torch.tensor(chunk[None]))

    reader = gguf.GGUFReader(tiny_imatrix)  # gguf-py reads the file, not our reader
    got = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(n.removesuffix(".in_sum2") for n in got if n.endswith(".in_sum2")) == sorted(sums)
    for name, ref in sums.items():
        # before any attention, float error; after it, llama.cpp's F16 KV cache (llama-imatrix's
        # default too) rounds K and V: measured 4e-7 and at most 9.5e-4
        rtol = 1e-6 if name.startswith("blk.0.attn_") and name != "blk.0.attn_output.weight" else 2e-3
        np.testing.assert_allclose(got[name + ".in_sum2"].reshape(-1), ref, rtol=rtol, err_msg=name)
        assert got[name + ".counts"].reshape(-1).tolist() == [CHUNKS * CTX]
    field = reader.fields
    assert bytes(field["general.type"].parts[-1]).decode() == "imatrix"
    assert field["imatrix.chunk_count"].contents() == CHUNKS and field["imatrix.chunk_size"].contents() == CTX
    assert field["imatrix.datasets"].contents() == [str(TEXT)]


def test_legacy_dat_reads_as_the_gguf_does(tiny_imatrix, tmp_path):
    """A .dat written the way llama-imatrix's save_imatrix_legacy writes it gives the same importance."""
    im = read_imatrix(tiny_imatrix)
    ncall = im.chunk_count
    blob = struct.pack("<i", len(im.sums))
    for name in sorted(im.sums):
        values = im.sums[name].reshape(-1) / im.counts[name][0] * ncall
        blob += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size)
        blob += values.astype(np.float32).tobytes()
    blob += struct.pack("<i", ncall) + struct.pack("<i", 4) + b"a.tx"
    dat = tmp_path / "x.dat"
    dat.write_bytes(blob)
    legacy = read_imatrix(dat)
    assert legacy.legacy and legacy.datasets == ["a.tx"] and legacy.chunk_count == ncall
    want, got = im.importance(), legacy.importance()
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6)


def test_quantize_with_imatrix_records_it_and_info_shows_it(built, tiny_imatrix, tmp_path):
    out = tmp_path / "x-IQ2_XXS.gguf"
    res = run_cli("quantize", built["F16"], "-q", "iq2_xxs", "--imatrix", tiny_imatrix, "-o", out)
    assert res.exit_code == 0, res.output
    fields = gguf.GGUFReader(out).fields
    assert fields["quantize.imatrix.file"].contents() == str(tiny_imatrix)
    assert fields["quantize.imatrix.dataset"].contents() == str(TEXT)
    assert fields["quantize.imatrix.entries_count"].contents() == 14  # 7 matrices x 2 blocks
    assert fields["quantize.imatrix.chunks_count"].contents() == CHUNKS
    types = {gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(out).tensors}
    assert "IQ2_XXS" in types
    info = run_cli("info", out)
    assert "importance matrix" in info.output and "entries_count=14" in info.output


def test_tensor_overrides_reach_llama_cpp(built, tmp_path):
    out = tmp_path / "o.gguf"
    res = run_cli(
        "quantize", built["F16"], "-q", "q4_k_m", "-o", out,
        "--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.1\.ffn_down=q5_k", "--output-tensor-type", "f16",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "attn_v=q8_0: 2 tensors" in res.output
    types = {t.name: gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_v.weight"] == types["blk.1.attn_v.weight"] == "Q8_0"
    assert types["blk.1.ffn_down.weight"] == "Q5_K" and types["output.weight"] == "F16"
    assert types["blk.0.attn_q.weight"] == "Q4_K"


@pytest.mark.parametrize("quant", [q for q in QUANTS.values() if q.by_llama_cpp], ids=lambda q: q.name)
def test_needs_imatrix_is_llama_cpps_own_verdict(built, quant):
    """llama.cpp's dry run (no data read) says which types it would refuse without a matrix."""
    assert dry_run(built["F16"], quant, 1).needs_imatrix == quant.needs_imatrix


def test_dry_run_prints_llama_cpps_types_and_writes_nothing(built, tmp_path):
    out = tmp_path / "d.gguf"
    res = run_cli("quantize", built["F16"], "-q", "q4_k_m", "-o", out, "--dry-run", "--pure")
    assert res.exit_code == 0, res.output
    assert "dry run" in res.output and not out.exists()
    assert "Q4_K" in res.output and "Q6_K" not in res.output  # --pure: no mix


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-q", "iq2_xxs"], "needs an importance matrix"),
        (["-q", "q2_k_s"], "--imatrix"),
        (["-q", "q4_k_x"], "unknown quant q4_k_x"),
        (["-q", "q4_k_m", "--tensor-type", "attn_v"], "PATTERN=TYPE"),
        (["-q", "q4_k_m", "--tensor-type", "[=q8_0"], "not a regular expression"),
        (["-q", "q4_k_m", "--tensor-type", "attn_v=q9_9"], "not a ggml type"),
        (["-q", "q4_k_m", "--tensor-type", "attn_zz=q8_0"], "matches no tensor"),
        (["-q", "q4_k_m", "--output-tensor-type", "q7"], "not a ggml type"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(built, tmp_path, args, expected):
    out = tmp_path / "r.gguf"
    one_error_line(run_cli("quantize", built["F16"], *args, "-o", out), expected)
    assert list(tmp_path.iterdir()) == []


def test_mismatched_or_corrupt_imatrix_is_refused_before_any_output(built, tiny_imatrix, tmp_path):
    other = tmp_path / "other.imatrix.gguf"
    im = read_imatrix(tiny_imatrix)
    im.sums = {k: np.ones((1, v.size * 2), np.float32) for k, v in im.sums.items()}  # another width
    write_imatrix(other, im)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_imatrix.read_bytes()[:300])  # truncated
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x07\x00\x00\x00not an imatrix")
    for path, expected in ((other, "made for another model"), (bad, "not a readable imatrix"), (junk, "imatrix")):
        out = tmp_path / "q.gguf"
        one_error_line(run_cli("quantize", built["F16"], "-q", "q4_k_m", "--imatrix", path, "-o", out), expected)
        assert not out.exists() and not list(tmp_path.glob("*.part"))
    one_error_line(run_cli("quantize", built["F16"], "-q", "q4_k_m", "--imatrix", tmp_path / "none"), "no such")


def test_build_imatrix_auto_keeps_and_reuses_it(pair, tmp_path):
    args = ["build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", tmp_path, "--name", "t", "--force"]
    res = run_cli(*args, "-q", "iq2_xxs,q8_0", "--imatrix", "auto", "--calibration", TEXT, "--imatrix-chunks", "2")
    assert res.exit_code == 0, res.output
    kept = tmp_path / "t.imatrix.gguf"
    im = read_imatrix(kept)
    assert im.chunk_count == 2 and im.chunk_size == 512 and im.datasets == [str(TEXT)]
    fields = gguf.GGUFReader(tmp_path / "t-IQ2_XXS.gguf").fields
    assert fields["quantize.imatrix.file"].contents() == str(kept)
    assert "quantize.imatrix.file" not in gguf.GGUFReader(tmp_path / "t-Q8_0.gguf").fields  # Q8_0 uses none
    again = run_cli(*args, "-q", "iq2_xxs", "--imatrix", "auto")
    assert again.exit_code == 0 and "reusing" in again.output, again.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("Modelfile")) == [
        "t-IQ2_XXS.gguf",
        "t-Q8_0.gguf",
        "t.imatrix.gguf",
    ]


def test_build_refuses_iq_types_without_imatrix_or_with_a_foreign_one_before_writing(pair, tiny_imatrix, tmp_path):
    args = ["build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", tmp_path / "o", "-q", "q8_0,iq1_m"]
    one_error_line(run_cli(*args), "iq1_m needs an importance matrix")
    partial = read_imatrix(tiny_imatrix)
    del partial.sums["blk.1.ffn_down.weight"]
    for name, change in (("wide", lambda v: np.ones((1, v.size + 32), np.float32)), ("partial", None)):
        im = read_imatrix(tiny_imatrix) if change else partial
        if change:
            im.sums = {k: change(v) for k, v in im.sums.items()}
        write_imatrix(tmp_path / f"{name}.imatrix.gguf", im)
    one_error_line(run_cli(*args, "--imatrix", tmp_path / "wide.imatrix.gguf"), "made for another model")
    one_error_line(run_cli(*args, "--imatrix", tmp_path / "partial.imatrix.gguf"), "no entry for blk.1.ffn_down")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_our_imatrix_lowers_kld_on_smollm2(smollm2_quants, tmp_path):
    """SmolLM2 (F32): Q4_K_M and Q4_0 (a block type, then made by llama.cpp's quantizer) made with our
    importance matrix are closer to F32 than without.

    The matrix comes from the shipped calibration text; the scored text is scripts/data/sample.txt,
    which is not part of it."""
    f32 = smollm2_quants["f32"]
    im = tmp_path / "s.imatrix.gguf"
    from expo_gguf._data import calibration_file

    res = run_cli("imatrix", f32, "--text", calibration_file(), "--ctx", 256, "--chunks", 16, "-o", im)
    assert res.exit_code == 0, res.output
    files = []
    for q in ("q4_k_m", "q4_0"):
        for with_im in (False, True):
            out = tmp_path / f"{q}-{'im' if with_im else 'plain'}.gguf"
            res = run_cli("quantize", f32, "-q", q, "-o", out, *(["--imatrix", im] if with_im else []))
            assert res.exit_code == 0, res.output
            files.append(out)
    report = tmp_path / "r.json"
    res = run_cli("eval", f32, *files, "--text", TEXT, "--ctx", 256, "--chunks", 4, "--json", report)
    assert res.exit_code == 0, res.output
    import json

    kld = {Path(f["file"]).stem: f["kld"]["mean"] for f in json.loads(report.read_text())["files"] if f["kld"]}
    assert kld["q4_k_m-im"] < kld["q4_k_m-plain"] and kld["q4_0-im"] < kld["q4_0-plain"], kld


def test_ctrl_c_during_collection_leaves_no_file(built, tmp_path, monkeypatch):
    """Ctrl+C lands in the eval callback (Python code inside llama_decode): it is carried out of C,
    the command says `interrupted`, and no imatrix file exists."""
    from expo_gguf.measure import imatrix as m

    calls = {"n": 0}
    real = m.Collector._collect

    def collect(self, src0, src1):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(self, src0, src1)

    monkeypatch.setattr(m.Collector, "_collect", collect)
    out = tmp_path / "x.imatrix.gguf"
    res = run_cli("imatrix", built["F32"], "--text", TEXT, "--ctx", CTX, "-o", out)
    assert res.exit_code == 130 and "interrupted" in res.output, res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_during_a_long_run_stops_it_at_once(built, tmp_path):
    """A real signal, while llama.cpp computes: exit 130 within seconds, not at the text's end."""
    import signal
    import subprocess
    import sys
    import time

    from expo_gguf._data import calibration_file

    out = tmp_path / "x.imatrix.gguf"
    cmd = [sys.executable, "-c", "from expo_gguf.cli import main; main()", "imatrix", str(built["F16"])]
    proc = subprocess.Popen([*cmd, "--text", str(calibration_file()), "-o", str(out)], stderr=subprocess.PIPE)
    time.sleep(8)  # vocab, tokenizing, then chunks (the whole text takes minutes)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"interrupted" in err and b"Traceback" not in err, err
    assert time.monotonic() - t0 < 30
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["missing folder", "a file for a folder", "a folder", "the model", "read-only"])
def test_output_is_checked_before_any_work(built, tmp_path, monkeypatch, where):
    """Issue 26: a bad -o is one line, exit 2, before the model is run (at 7B, an hour), nothing written."""
    import os

    from expo_gguf.cli import imatrix as command

    monkeypatch.setattr(command, "collect_imatrix", lambda *a, **k: pytest.fail("the run began before -o was checked"))
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    (tmp_path / "dir.gguf").mkdir()
    (tmp_path / "ro").mkdir(mode=0o500)
    if where == "read-only" and os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("root writes anywhere")
    out, expected = {
        "missing folder": (tmp_path / "no" / "x.imatrix.gguf", f"no such folder {tmp_path / 'no'}"),
        "a file for a folder": (blocker / "x.imatrix.gguf", f"{blocker} is not a folder"),
        "a folder": (tmp_path / "dir.gguf", "is a folder; give a file name"),
        "the model": (built["F32"], "is an input"),
        "read-only": (tmp_path / "ro" / "x.imatrix.gguf", f"cannot write in {tmp_path / 'ro'}"),
    }[where]
    before = sorted(tmp_path.rglob("*"))
    one_error_line(run_cli("imatrix", built["F32"], "--text", TEXT, "-o", out, "--force"), expected)
    assert sorted(tmp_path.rglob("*")) == before and blocker.read_text() == "mine"


def test_default_output_from_an_installed_package_goes_here(tmp_path, monkeypatch):
    """Issue 26: one rule with quantize and modelfile: a model in site-packages gets its matrix in
    the current directory, with a note; the package's folder is left as it was."""
    src = smollm2()
    package = sorted(p.name for p in src.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    res = run_cli("imatrix", src, "--text", TEXT, "--ctx", CTX, "--chunks", 1, "--threads", 2)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"note: {src.parent} is an installed package's folder: writing {src.name.split('.')[0]}.imatrix.gguf" in text
    assert "1 chunk of 64 (64 tokens," in text  # singular counts
    assert [p.name for p in tmp_path.iterdir()] == ["SmolLM2-135M-Instruct.imatrix.gguf"]
    assert read_imatrix(tmp_path / "SmolLM2-135M-Instruct.imatrix.gguf").chunk_count == 1
    assert sorted(p.name for p in src.parent.iterdir()) == package
