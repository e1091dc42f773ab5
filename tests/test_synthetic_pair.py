"""The synthetic SFT/RLHF pair must look like the real HF checkpoints to every reader we rely on."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import llama_cpp_src, synthetic

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
        for f in (
            "config.json",
            "generation_config.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "added_tokens.json",
            "special_tokens_map.json",
        ):
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
        model, info = transformers.MistralForCausalLM.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
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
        1,
        420,
        6316,
        28781,
        3198,
        3123,
        1247,
        28747,
        12014,
        32000,
        420,
        6316,
        28781,
        3198,
        3123,
        21631,
        28747,
    ]
    cfg = json.loads((pair[1] / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == gen.families.STARLING_TEMPLATE
    assert cfg["model_max_length"] == 1000000000000000019884624838656


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


# --- the other families: zephyr (Mistral, 32000 pieces) and llama3 (Llama, GQA, head_dim, BPE) -------------------
FAMILY_CASES = [("zephyr", False), ("llama3", False), ("llama3", True)]
FILES = {
    "zephyr": {
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    },
    "llama3": {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    },
}
SPECIAL_IDS = {"zephyr": (32000, 1, 2), "llama3": (128256, 128000, 128009)}  # (len(tokenizer), bos, eos)
GENERATION_EOS = {"zephyr": 2, "llama3": [128001, 128008, 128009]}
CHAT_HI = {  # one user turn "hi" with add_generation_prompt, as the models' cards give the format
    "zephyr": "<|user|>\nhi</s>\n<|assistant|>\n",
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}


@pytest.fixture(scope="module", params=FAMILY_CASES, ids=["zephyr", "llama3", "llama3-tied"])
def family_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, bool, Path, Path]:
    """Made through the CLI, as a user would."""
    family, tied = request.param
    if gen.FAMILIES[family].needs_llama_cpp:
        llama_cpp_src()
    out = tmp_path_factory.mktemp(family)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        gen.main([str(out), "--family", family, *(["--tied"] if tied else [])])
    sft, rlhf = (Path(p) for p in printed.getvalue().split())
    return family, tied, sft, rlhf


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The llama3 RLHF dir."""
    llama_cpp_src()
    return gen.make_pair(tmp_path_factory.mktemp("llama3"), family="llama3")[1]


def test_family_layout(family_pair: tuple[str, bool, Path, Path]) -> None:
    family, tied, sft, rlhf = family_pair
    fam = gen.FAMILIES[family]
    assert (sft.name, rlhf.name) == (fam.sft[0], fam.rlhf[0])
    expected = dict(gen.tensor_list("tiny", family, tied))
    assert ("lm_head.weight" in expected) is not tied
    layouts = []
    for d, repo in ((sft, fam.sft[1]), (rlhf, fam.rlhf[1])):
        assert FILES[family] <= {p.name for p in d.iterdir()}
        assert not (d / "added_tokens.json").exists()
        wm = read_index(d)["weight_map"]
        assert set(wm) == set(expected) and len(set(wm.values())) >= 2
        layouts.append(tuple(wm[k] for k in sorted(wm)))
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["_name_or_path"] == repo and cfg["tie_word_embeddings"] is tied
        assert json.loads((d / "generation_config.json").read_text())["eos_token_id"] == GENERATION_EOS[family]
    assert layouts[0] != layouts[1], "SFT and RLHF must be sharded differently"


def test_family_loads_in_transformers(family_pair: tuple[str, bool, Path, Path]) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    family, tied, _, rlhf = family_pair
    config = transformers.AutoConfig.from_pretrained(rlhf)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(rlhf, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    vocab = gen.FAMILIES[family].vocab
    assert type(model).__name__ == {"zephyr": "MistralForCausalLM", "llama3": "LlamaForCausalLM"}[family]
    assert config.vocab_size == vocab
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (emb.data_ptr() == head.data_ptr()) is tied
    if family == "llama3":
        attn = model.model.layers[0].self_attn
        assert config.head_dim == 32 and tuple(attn.q_proj.weight.shape) == (128, 64)
        assert tuple(attn.k_proj.weight.shape) == (64, 64)  # 2 KV heads: grouped-query attention
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, vocab) and torch.isfinite(logits).all() and logits.std() > 0.1


def test_family_chat_template(family_pair: tuple[str, bool, Path, Path]) -> None:
    pytest.importorskip("google.protobuf")
    transformers = pytest.importorskip("transformers")
    family, _, _, rlhf = family_pair
    tok = transformers.AutoTokenizer.from_pretrained(rlhf)
    size, bos, eos = SPECIAL_IDS[family]
    assert (len(tok), tok.bos_token_id, tok.eos_token_id) == (size, bos, eos)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == CHAT_HI[family]
    ids = tok(text, add_special_tokens=False).input_ids
    assert eos in ids and (ids[0] == bos) is (family == "llama3")  # zephyr's template leaves bos to the tokenizer


def test_llama3_rope_factors_mix(llama3: Path) -> None:
    """The tiny config's llama3 rope scaling gives factors 1, 8 and a smoothed one in between, computed as
    llama.cpp's converter does (conversion/llama.py) and as transformers' llama3 rope init does."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = json.loads((llama3 / "config.json").read_text())
    rope, dim, base = cfg["rope_scaling"], cfg["head_dim"], cfg["rope_theta"]
    factors = []
    for freq in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim):
        wavelen = 2 * np.pi / freq
        old = rope["original_max_position_embeddings"]
        if wavelen < old / rope["high_freq_factor"]:
            factors.append(1.0)
        elif wavelen > old / rope["low_freq_factor"]:
            factors.append(rope["factor"])
        else:
            smooth = (old / wavelen - rope["low_freq_factor"]) / (rope["high_freq_factor"] - rope["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    factors = np.array(factors)
    assert len(factors) == 16 and {1.0, 8.0} <= set(factors.tolist())
    assert ((factors > 1) & (factors < 8)).any()
    config = transformers.AutoConfig.from_pretrained(llama3)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    plain = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    assert np.allclose((plain / scaled).numpy(), factors, rtol=1e-5)


def test_llama3_needs_llama_cpp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPO_LLAMA_CPP_SRC", str(tmp_path / "absent"))
    with pytest.raises(gen.families.FixtureError, match="llama.cpp sources not found"):
        gen.make_pair(tmp_path / "out", family="llama3")
    assert not (tmp_path / "out").exists()  # refused before writing anything
    with pytest.raises(SystemExit, match="^error: family 'llama3'"):
        gen.main([str(tmp_path / "out"), "--family", "llama3"])


def test_llama_cpp_src_fetches_only_our_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch keeps only the parts we use and lands atomically; pip is faked with a small sdist."""
    import subprocess
    import tarfile

    models = gen.models
    top = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    names = [
        "models/ggml-vocab-x.gguf",
        "models/templates/t.jinja",
        "convert_hf_to_gguf.py",
        "conversion/a.py",
        "gguf-py/gguf/b.py",
        "src/llama.cpp",
        "models/other.bin",
        "tests/t.py",
    ]
    sdist = tmp_path / "sdist.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for n in names:
            (tmp_path / "f").write_text(n)
            tar.add(tmp_path / "f", top + n)

    def fake_pip(cmd: list[str], **_: object) -> subprocess.CompletedProcess:
        assert cmd[-3:-2] == ["llama-cpp-python==9.9.9"]
        (Path(cmd[-1]) / "llama_cpp_python-9.9.9.tar.gz").write_bytes(sdist.read_bytes())
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.delenv("EXPO_LLAMA_CPP_SRC", raising=False)
    monkeypatch.setattr(models, "SRC_CACHE", tmp_path / "cache")
    monkeypatch.setattr(models, "version", lambda _: "9.9.9")
    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    assert models.llama_cpp_src(fetch=False) is None
    src = models.llama_cpp_src()
    assert src == tmp_path / "cache" / top.rstrip("/")
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()) == sorted(names[:5])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["llama_cpp_python-9.9.9"]  # no temp dir left
    monkeypatch.setenv("EXPO_LLAMA_CPP_SRC", str(tmp_path))
    assert models.llama_cpp_src() == tmp_path
