"""The synthetic SFT/RLHF pair must look like the real HF checkpoints to every reader we rely on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic



gen = synthetic


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return gen.make_pair(tmp_path_factory.mktemp("pair"), "tiny", seed=0)


def read_index(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())


def test_layout_and_shards(pair: tuple[Path, Path]) -> None:
    sft, rlhf = pair
    assert (sft.name, rlhf.name) == ("openchat-3.5-0106", "Starling-LM-7B-beta")
    expected = dict(gen.tensor_list("tiny"))
    shard_sets = []
    for d in pair:
        idx = read_index(d)
        shards = sorted(set(idx["weight_map"].values()))
        n = len(shards)
        assert n >= 2 and shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
        assert sorted(p.name for p in d.glob("*.safetensors")) == shards
        assert set(idx["weight_map"]) == set(expected)
        assert idx["metadata"]["total_size"] == sum(2 * int(np.prod(s)) for s in expected.values())
        for f in ("config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
                  "added_tokens.json", "special_tokens_map.json"):
            assert (d / f).is_file(), f
        shard_sets.append(tuple(idx["weight_map"][k] for k in sorted(expected)))
    assert shard_sets[0] != shard_sets[1], "SFT and RLHF must be sharded differently"


def test_tensors_load_and_differ(pair: tuple[Path, Path]) -> None:
    torch = pytest.importorskip("torch")
    from safetensors import safe_open  # numpy has no bfloat16, so framework="np" cannot read BF16

    tensors = []
    for d in pair:
        out = {}
        for name, shard in read_index(d)["weight_map"].items():
            with safe_open(str(d / shard), framework="pt") as f:
                assert f.metadata() == {"format": "pt"}
                out[name] = f.get_tensor(name)
        tensors.append(out)
    sft, rlhf = tensors
    for name, shape in gen.tensor_list("tiny"):
        a, b = sft[name], rlhf[name]
        assert a.dtype == b.dtype == torch.bfloat16 and tuple(a.shape) == tuple(b.shape) == shape
        a, b = a.float(), b.float()
        assert torch.isfinite(a).all() and not torch.equal(a, b)
        if name.endswith("norm.weight"):
            assert abs(a.mean().item() - 1.0) < 0.01
        else:
            assert 0.015 < a.std().item() < 0.025
            assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.9


def test_deterministic(pair: tuple[Path, Path], tmp_path: Path) -> None:
    again = gen.make_pair(tmp_path, "tiny", seed=0)
    for d0, d1 in zip(pair, again):
        for p in sorted(d0.iterdir()):
            assert p.read_bytes() == (d1 / p.name).read_bytes(), p.name


def test_transformers_forward(pair: tuple[Path, Path]) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ids = torch.tensor([[1, 22557, 28725, 1526, 28808, 32000]])
    logits = []
    for d in pair:
        model, info = transformers.MistralForCausalLM.from_pretrained(
            d, dtype=torch.float32, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        with torch.no_grad():
            out = model(ids).logits
        assert out.shape == (1, ids.shape[1], 32002) and torch.isfinite(out).all() and out.std() > 0.1
        logits.append(out)
    assert (logits[0] - logits[1]).abs().max() > 1e-2


def test_tokenizer(pair: tuple[Path, Path]) -> None:
    pytest.importorskip("google.protobuf")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(pair[1])
    assert tok.encode("<|end_of_turn|>", add_special_tokens=False) == [32000]
    assert tok.bos_token_id == 1 and tok.eos_token_id == 32000 and len(tok) == 32002
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<s>GPT4 Correct User: hi<|end_of_turn|>GPT4 Correct Assistant:"
    # Token ids as openchat's model card lists them for this prompt format.
    assert tok(text, add_special_tokens=False).input_ids == [
        1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 12014, 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747]
    cfg = json.loads((pair[1] / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == gen.CHAT_TEMPLATE and cfg["model_max_length"] == 1000000000000000019884624838656


def test_fake_hf_cache(pair: tuple[Path, Path], tmp_path: Path) -> None:
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = gen.fake_hf_cache(tmp_path, "Nexusflow/Starling-LM-7B-beta", pair[1])
    repo = tmp_path / "models--Nexusflow--Starling-LM-7B-beta"
    assert snap == repo / "snapshots" / rev
    assert (repo / "refs" / "main").read_text() == rev
    files = sorted(p.name for p in pair[1].iterdir())
    assert sorted(p.name for p in snap.iterdir()) == files
    for name in files:
        link = snap / name
        target = os.readlink(link)
        assert link.is_symlink() and re.fullmatch(r"\.\./\.\./blobs/[0-9a-f]{64}", target), target
        assert link.read_bytes() == (pair[1] / name).read_bytes()
    hub = pytest.importorskip("huggingface_hub")
    found = hub.try_to_load_from_cache("Nexusflow/Starling-LM-7B-beta", "config.json", cache_dir=tmp_path)
    assert found is not None and Path(found) == snap / "config.json"


def test_cli_shard_mb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen.main([str(tmp_path), "--shard-mb", "5", "--seed", "3"])
    dirs = capsys.readouterr().out.split()
    assert dirs == [str(tmp_path / "openchat-3.5-0106"), str(tmp_path / "Starling-LM-7B-beta")]
    counts = [len(set(read_index(Path(d))["weight_map"].values())) for d in dirs]
    assert counts == [3, 3]  # 5 MB: embed | layers+norm | lm_head; 7.5 MB: the same split
