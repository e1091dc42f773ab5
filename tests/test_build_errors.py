"""Every bad input: one clear line, a non-zero exit, no traceback, and no .gguf or .part left."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import Pair, run_cli


def _build(pair: Pair, out: Path, *extra: str):  # noqa: ANN202
    return run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", out, *extra)


def assert_clean_failure(res, out: Path, needle: str, code: int | None = None) -> None:  # noqa: ANN001
    assert res.exit_code != 0, res.output
    if code is not None:
        assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # handled, not a crash
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], res.output
    leftovers = list(out.glob("*.gguf")) + list(out.glob("*.part")) + list(out.glob(".*")) if out.exists() else []
    assert leftovers == []


def _shard_of(d: Path, tensor: str) -> Path:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    return d / index["weight_map"][tensor]


def _edit_tensors(d: Path, tensor: str, edit) -> None:  # noqa: ANN001
    """Rewrite the shard holding ``tensor`` with ``edit(dict)`` applied, and keep the index in step."""
    shard = _shard_of(d, tensor)
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != shard.name}
    for k in tensors:
        index["weight_map"][k] = shard.name
    index_path.write_text(json.dumps(index))


def _edit_json(path: Path, **changes) -> None:  # noqa: ANN003
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


EMBED = "model.embed_tokens.weight"
Q0 = "model.layers.0.self_attn.q_proj.weight"


def _missing_shard(p: Pair) -> None:
    _shard_of(p.sft, Q0).unlink()


def _truncated_shard(p: Pair) -> None:
    shard = _shard_of(p.rlhf, Q0)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)


def _index_outside(p: Pair) -> None:
    index_path = p.rlhf / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][Q0] = "../sft/" + index["weight_map"][Q0]
    index_path.write_text(json.dumps(index))


def _index_absolute(p: Pair) -> None:
    index_path = p.sft / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][Q0] = "/etc/passwd"
    index_path.write_text(json.dumps(index))


def _index_names_missing_file(p: Pair) -> None:
    index_path = p.sft / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][Q0] = "model-00009-of-00009.safetensors"
    index_path.write_text(json.dumps(index))


def _corrupt_header(p: Pair) -> None:
    shard = _shard_of(p.rlhf, Q0)
    with open(shard, "r+b") as f:
        f.seek(8)
        f.write(b"\xff\xfe not json at all")


def _huge_header(p: Pair) -> None:
    shard = _shard_of(p.rlhf, Q0)
    with open(shard, "r+b") as f:
        f.write((10**12).to_bytes(8, "little"))


def _other_architecture(p: Pair) -> None:
    _edit_json(p.sft / "config.json", architectures=["GPT2LMHeadModel"])


def _tensor_only_in_rlhf(p: Pair) -> None:
    _edit_tensors(p.sft, Q0, lambda t: t.pop(Q0))


def _shape_differs(p: Pair) -> None:
    _edit_tensors(p.sft, Q0, lambda t: t.update({Q0: t[Q0][:, :128].contiguous()}))


def _vocab_differs(p: Pair) -> None:
    _edit_json(p.sft / "config.json", vocab_size=32000)
    _edit_tensors(p.sft, EMBED, lambda t: t.update({EMBED: t[EMBED][:32000].contiguous()}))


def _unsupported_dtype(p: Pair) -> None:
    _edit_tensors(p.rlhf, Q0, lambda t: t.update({Q0: t[Q0].to(torch.int32)}))


def _nan_in_result(p: Pair) -> None:
    def poison(t: dict) -> None:
        t[Q0] = t[Q0].clone()
        t[Q0][3, 7] = float("nan")

    _edit_tensors(p.rlhf, Q0, poison)


def _pickle_only(p: Pair) -> None:
    for f in list(p.sft.glob("*.safetensors")) + [p.sft / "model.safetensors.index.json"]:
        f.unlink()
    (p.sft / "pytorch_model.bin").write_bytes(b"\x80\x04not really")


def _no_config(p: Pair) -> None:
    (p.rlhf / "config.json").unlink()


def _no_tokenizer(p: Pair) -> None:
    (p.rlhf / "tokenizer.model").unlink()


def _lone_surrogate_token(p: Pair) -> None:
    """Found by the long fuzz run: JSON can spell a token no tokenizer can hold."""
    path = p.rlhf / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["added_tokens_decoder"]["32001"]["content"] = "\udcff"
    path.write_bytes(json.dumps(cfg).encode())


def _both_configs(**changes) -> Callable[[Pair], None]:  # noqa: ANN003
    def damage(p: Pair) -> None:
        _edit_json(p.sft / "config.json", **changes)
        _edit_json(p.rlhf / "config.json", **changes)

    return damage


def _norm_missing_in_both(p: Pair) -> None:
    for d in (p.sft, p.rlhf):
        _edit_tensors(d, "model.norm.weight", lambda t: t.pop("model.norm.weight"))


CASES = {
    "missing shard": (_missing_shard, "missing shard"),
    "truncated shard": (_truncated_shard, "truncated shard"),
    "index path outside": (_index_outside, "leaves the checkpoint directory"),
    "index absolute path": (_index_absolute, "leaves the checkpoint directory"),
    "index names missing file": (_index_names_missing_file, "missing shard"),
    "corrupt header": (_corrupt_header, "corrupt safetensors header"),
    "huge header": (_huge_header, "corrupt safetensors header"),
    "other architecture": (_other_architecture, "GPT2LMHeadModel; supported: MistralForCausalLM, LlamaForCausalLM"),
    "tensor sets differ": (_tensor_only_in_rlhf, "only in RLHF"),
    "shapes differ": (_shape_differs, "q_proj.weight shape"),
    "vocab differs": (_vocab_differs, "vocab_size 32000 (SFT) vs 32002 (RLHF)"),
    "unsupported dtype": (_unsupported_dtype, "dtype 'I32'"),
    "NaN in result": (_nan_in_result, "NaN or Inf"),
    "pickle only": (_pickle_only, "never unpickles"),
    "no config": (_no_config, "config.json: missing"),
    "no tokenizer": (_no_tokenizer, "no tokenizer (tokenizer.model or tokenizer.json)"),
    # both checkpoints agree, but not with what llama.cpp will look for: refused, not built
    "layers vs config": (_both_configs(num_hidden_layers=3), "missing 9 tensors (first blk.2."),
    "ffn vs config": (_both_configs(intermediate_size=1024), "config.json implies [1024, 256]"),
    "tensor missing in both": (_norm_missing_in_both, "missing 1 tensor (first output_norm.weight)"),
    "zero heads": (_both_configs(num_attention_heads=0), "non-positive head_count=0"),
    "heads do not group": (_both_configs(num_key_value_heads=3), "do not group into 3 KV heads"),
    "rope scaling yarn": (
        _both_configs(rope_scaling={"type": "yarn", "factor": 4.0}),
        "rope_scaling type 'yarn' is not supported",
    ),
    "rope scaling no factor": (_both_configs(rope_scaling={"rope_type": "linear"}), "needs a positive factor"),
    "lone surrogate token": (_lone_surrogate_token, "is not valid Unicode text"),
    "bad added token id": (
        lambda p: (p.rlhf / "added_tokens.json").write_text('{"<|x|>": "abc"}'),
        "not a non-negative integer",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint(pair_copy, tmp_path, case):
    damage, needle = CASES[case]
    damage(pair_copy)
    out = tmp_path / "models"
    assert_clean_failure(_build(pair_copy, out, "-q", "q8_0,q4_k_m"), out, needle)


def test_missing_directory(pair, tmp_path):
    res = run_cli("build", "--sft", tmp_path / "nope", "--rlhf", pair.rlhf, "--outdir", tmp_path)
    assert_clean_failure(res, tmp_path, "no such directory", code=2)


def test_name_must_not_be_a_path(pair, tmp_path):
    res = _build(pair, tmp_path / "out", "-q", "q8_0", "--name", "../escaped")
    assert_clean_failure(res, tmp_path, "a file name, not a path", code=2)


def test_unknown_quant(pair, tmp_path):
    assert_clean_failure(_build(pair, tmp_path, "-q", "q8_0,q3_xl"), tmp_path, "unknown quant q3_xl", code=2)


def test_existing_output_needs_force(pair, tmp_path):
    target = tmp_path / "Starling-LM-7B-beta-ExPO-Q8_0.gguf"
    target.write_bytes(b"precious")
    res = _build(pair, tmp_path, "-q", "q8_0")
    assert res.exit_code == 2 and "use --force" in res.output
    assert target.read_bytes() == b"precious"
    assert _build(pair, tmp_path, "-q", "q8_0", "--force").exit_code == 0
    assert target.read_bytes()[:4] == b"GGUF"


def test_disk_full_mid_write(pair, tmp_path, monkeypatch):
    from expo_gguf.convert import writer

    real = writer.GGUFStream._emit
    written = {"n": 0}

    def emit(self, data):  # noqa: ANN001, ANN202
        written["n"] += len(data)
        if written["n"] > 5_000_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(writer.GGUFStream, "_emit", emit)
    assert_clean_failure(_build(pair, tmp_path, "-q", "q8_0,f32"), tmp_path, "disk full", code=1)


def test_ctrl_c_during_build_leaves_nothing(pair, tmp_path, monkeypatch):
    from expo_gguf.convert import writer

    real = writer.GGUFStream.write
    calls = {"n": 0}

    def write(self, chunk):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(self, chunk)

    monkeypatch.setattr(writer.GGUFStream, "write", write)
    res = _build(pair, tmp_path, "-q", "q8_0,q4_k_m")
    assert res.exit_code == 130 and "interrupted" in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(errno.ENOSPC, "No space left on device")])
def test_failure_in_the_kquant_step_leaves_nothing(pair, tmp_path, monkeypatch, failure):
    """All or nothing: the Q8_0 written in the pass is not kept when the K-quant after it fails."""
    from expo_gguf.convert import execute as build

    def quantize(*args):  # noqa: ANN002, ANN202
        raise failure

    monkeypatch.setattr(build, "llama_quantize", quantize)
    res = _build(pair, tmp_path, "-q", "q8_0,q4_k_m")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_read_error_mid_file_names_file_and_offset(pair, tmp_path, monkeypatch):
    """EIO in the middle of a shard (small read blocks, the 7th read fails): one line, nothing left."""
    from expo_gguf.source import reader

    monkeypatch.setattr(reader, "BLOCK_BYTES", 64 << 10)
    calls = {"n": 0, "at": -1}
    real = reader.os.preadv

    def preadv(fd, buffers, offset):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 7:
            calls["at"] = offset
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(reader.os, "preadv", preadv)
    res = _build(pair, tmp_path, "-q", "q8_0")
    assert_clean_failure(res, tmp_path, f"read error at byte {calls['at']}: Input/output error", code=2)
    assert calls["at"] > 0 and ".safetensors" in res.output


def test_stale_temporaries_of_a_killed_build_are_removed(pair, tmp_path):
    stale = [
        tmp_path / "Starling-LM-7B-beta-ExPO-Q5_1.gguf.part",
        tmp_path / ".Starling-LM-7B-beta-ExPO-F16.intermediate.gguf.part",
        tmp_path / "Starling-LM-7B-beta-ExPO-a0.3-Q4_K_M.gguf.part",
        tmp_path / ".Starling-LM-7B-beta-ExPO-a-1-F16.intermediate.gguf.part",
    ]
    others = [
        tmp_path / "Starling-LM-7B-beta-ExPO-v2-Q8_0.gguf.part",  # another build, still running
        tmp_path / "Starling-LM-7B-beta-ExPO-a0.3-v2-Q8_0.gguf.part",
    ]
    for p in stale + others:
        p.write_bytes(b"GGUF half")
    assert _build(pair, tmp_path, "-q", "q8_0").exit_code == 0
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)


def test_not_enough_disk_is_found_before_writing(pair, tmp_path):
    """On a real small filesystem (a 20 MB tmpfs; needs root): refused up front, naming both sizes."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        res = _build(pair, mnt, "-q", "f32")
        assert_clean_failure(res, mnt, "not enough disk", code=1)
        assert "needs 0.07 GB" in res.output and "0.02 GB free" in res.output
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
