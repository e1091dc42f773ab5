"""Zephyr- and Llama-3-shaped pairs end to end: the built GGUF against HF transformers (maths),
llama.cpp's own expected token ids and the `tokenizers` library (Llama 3's real vocabulary),
apply_chat_template (prompt) and llama_vocab_is_eog (every eos id stops generation)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from conftest import Pair, run_cli, synthetic

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ALPHA = 0.3
FAMILIES = {"zephyr": ("zephyr", False), "llama3": ("llama3", False), "llama3-tied": ("llama3", True)}


def _make(tmp_path_factory: pytest.TempPathFactory, key: str) -> Pair:
    family, tied = FAMILIES[key]
    try:
        sft, rlhf = synthetic.make_pair(tmp_path_factory.mktemp(key), "tiny", seed=1, family=family, tied=tied)
    except RuntimeError as e:  # llama.cpp's vocab files could not be had (offline, no cache)
        pytest.skip(str(e))
    return Pair(sft, rlhf)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Pair, dict[str, Path]]:
    """One pair per family, built through the CLI at F32 and Q8_0."""
    pair = _make(tmp_path_factory, request.param)
    out = tmp_path_factory.mktemp(f"{request.param}-out")
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--alpha", ALPHA, "-q", "f32,q8_0", "--outdir", out)
    assert res.exit_code == 0, res.output
    return request.param, pair, {p.stem.rsplit("-", 1)[1]: p for p in out.glob("*.gguf")}


def _state_dict(d: Path) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for f in glob.glob(f"{d}/*.safetensors"):
        sd.update(load_file(f))
    return sd


def _hf_model(pair: Pair, alpha: float = ALPHA):  # noqa: ANN202
    """The HF class config.json names, with the extrapolated weights computed in torch."""
    r, s = _state_dict(pair.rlhf), _state_dict(pair.sft)
    weights = {k: r[k].float() + alpha * (r[k].float() - s[k].float()) for k in r}
    config = transformers.AutoConfig.from_pretrained(pair.rlhf)
    model = getattr(transformers, config.architectures[0])(config).float().eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if config.tie_word_embeddings else set())
    model.tie_weights()
    return model


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def test_logits_match_transformers(family):
    key, pair, files = family
    hf_tok = transformers.AutoTokenizer.from_pretrained(pair.rlhf)
    ids = hf_tok.encode("The quick brown fox jumps over the lazy dog, and then 12345 more times.")
    assert len(ids) > 12  # positions far enough apart for the rope frequencies to matter
    with torch.no_grad():
        ref = _hf_model(pair)(torch.tensor([ids])).logits[0].numpy()
    f32 = _llama_logits(files["F32"], ids)
    assert np.abs(f32 - ref).max() < 1e-4 * ref.std(), key
    q8 = _llama_logits(files["Q8_0"], ids)
    rel = np.sqrt(((q8 - ref) ** 2).mean() / (ref**2).mean())
    assert rel < 0.05, key


def test_gguf_layout(family):
    key, pair, files = family
    from expo_gguf.gguf_check import read_gguf_header

    header = read_gguf_header(files["F32"])
    kv, names = header.values, {t.name for t in header.tensors}
    config = json.loads((pair.rlhf / "config.json").read_text())
    assert ("output.weight" in names) == (not config.get("tie_word_embeddings", False))
    if key.startswith("llama3"):
        assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "llama-bpe"
        assert "rope_freqs.weight" in names
        assert kv["llama.attention.key_length"] == config["head_dim"] != config["hidden_size"] // config["num_attention_heads"]
    else:
        assert kv["tokenizer.ggml.model"] == "llama" and "rope_freqs.weight" not in names


def test_every_eos_id_ends_generation(family):
    key, pair, files = family
    llm = llama_cpp.Llama(str(files["Q8_0"]), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    gen = json.loads((pair.rlhf / "generation_config.json").read_text())["eos_token_id"]
    tok_config = json.loads((pair.rlhf / "tokenizer_config.json").read_text())
    eos_ids = set(gen if isinstance(gen, list) else [gen])
    eos_ids |= set(llm.tokenize(tok_config["eos_token"].encode(), add_bos=False, special=True))
    assert len(eos_ids) == (3 if key.startswith("llama3") else 1)
    for tid in eos_ids:
        assert llama_cpp.llama_vocab_is_eog(vocab, tid), tid
        assert llama_cpp.llama_vocab_is_control(vocab, tid), tid
        assert llm.detokenize([tid], special=False) == b""  # never printed in a reply
    assert llm.token_eos() == llm.tokenize(tok_config["eos_token"].encode(), add_bos=False, special=True)[0]
    plain = llm.tokenize(b"Hello", add_bos=False)
    assert not any(llama_cpp.llama_vocab_is_eog(vocab, t) for t in plain)


def test_template_matches_apply_chat_template(family):
    key, pair, files = family
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(str(files["Q8_0"]), vocab_only=True, verbose=False)
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    fmt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And times ünïcode?"}]
    hf = transformers.AutoTokenizer.from_pretrained(pair.rlhf)
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert fmt(messages=messages).prompt == expected
    # and the rendered prompt tokenizes the same in llama.cpp as in transformers
    ours = llm.tokenize(expected.encode(), add_bos=False, special=True)
    assert ours == hf.encode(expected, add_special_tokens=False)


def _vocab_tests(src: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's tests/test-tokenizer-0 inputs and expected ids, parsed as it parses them."""
    raw = (src / "models" / "ggml-vocab-llama-bpe.gguf.inp").read_text("utf-8")
    sep = "\n__ggml_vocab_test__\n"
    inputs = raw.split(sep)
    if raw.endswith(sep):
        inputs.pop()
    outputs = (src / "models" / "ggml-vocab-llama-bpe.gguf.out").read_text("utf-8").splitlines()
    assert len(inputs) == len(outputs) > 20
    return [(i, [int(t) for t in o.split()]) for i, o in zip(inputs, outputs)]


@pytest.fixture(scope="module")
def llama3_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pair, Path]:
    pair = _make(tmp_path_factory, "llama3")
    out = tmp_path_factory.mktemp("llama3-vocab")
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "-q", "q8_0", "--outdir", out)
    assert res.exit_code == 0, res.output
    return pair, next(out.glob("*.gguf"))


def test_llama3_tokenizes_as_llama_cpp_expects(llama3_built):
    """Our GGUF's vocabulary gives llama.cpp's own expected ids for its Llama 3 test strings, and
    the same ids as the `tokenizers` library on the checkpoint's tokenizer.json."""
    from tokenizers import Tokenizer

    pair, path = llama3_built
    src = synthetic.models.llama_cpp_src()
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    hf = Tokenizer.from_file(str(pair.rlhf / "tokenizer.json"))
    for text, expected in _vocab_tests(src):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected, text
        assert hf.encode(text, add_special_tokens=False).ids == expected, text
    with_special = "<|start_header_id|>user<|end_header_id|>\n\nhi 🦙<|eot_id|>"
    assert llm.tokenize(with_special.encode(), add_bos=True, special=True) == hf.encode(with_special).ids


def test_linear_rope_scaling_matches_transformers(pair_copy, tmp_path):
    """rope_scaling linear (long-context finetunes of Llama 2): the GGUF's scaling keys give HF's logits."""
    for d in (pair_copy.sft, pair_copy.rlhf):
        cfg = json.loads((d / "config.json").read_text())
        cfg["rope_scaling"] = {"type": "linear", "factor": 4.0}
        (d / "config.json").write_text(json.dumps(cfg))
    res = run_cli("build", "--sft", pair_copy.sft, "--rlhf", pair_copy.rlhf, "-q", "f32", "--outdir", tmp_path)
    assert res.exit_code == 0, res.output
    path = next(tmp_path.glob("*.gguf"))
    from expo_gguf.gguf_check import read_gguf_header

    kv = read_gguf_header(path).values
    assert kv["llama.rope.scaling.type"] == "linear" and kv["llama.rope.scaling.factor"] == 4.0
    ids = [1, 415, 5565, 302, 4843, 349, 5465, 28723, 415, 5565, 302, 4843, 349, 5465, 28723, 13, 28770]
    with torch.no_grad():
        ref = _hf_model(pair_copy, 0.5)(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(_llama_logits(path, ids) - ref).max() < 1e-4 * ref.std()


def test_info_shortens_a_long_template(family):
    key, pair, files = family
    template = json.loads((pair.rlhf / "tokenizer_config.json").read_text())["chat_template"]
    short, full = run_cli("info", files["Q8_0"]), run_cli("info", "--template", files["Q8_0"])
    assert short.exit_code == full.exit_code == 0
    assert template.strip() in full.output
    if len(template.splitlines()) > 20:  # Llama 3.1's
        assert "more lines (--template prints it all)" in short.output and template.strip() not in short.output
    else:
        assert template.strip() in short.output
