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

from conftest import Pair, llama_cpp_src, make_family_pair, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.reference]

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ALPHA = 0.3
FAMILIES = {"zephyr": ("zephyr", False), "llama3": ("llama3", False), "llama3-tied": ("llama3", True)}


def _make(tmp_path_factory: pytest.TempPathFactory, key: str) -> Pair:
    family, tied = FAMILIES[key]
    return make_family_pair(tmp_path_factory.mktemp(key), family, tied, seed=1)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Pair, dict[str, Path]]:
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
    weights = {k: (r[k] + alpha * (r[k] - s[k])).float() for k in r}  # the authors' bf16 maths, the default
    config = transformers.AutoConfig.from_pretrained(pair.rlhf)
    model = getattr(transformers, config.architectures[0])(config).float().eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if config.tie_word_embeddings else set())
    model.tie_weights()
    return model


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=64,
        logits_all=True,
        verbose=False,
        n_threads=2,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )
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
    from expo_gguf.gguf_file.header import read_gguf_header

    header = read_gguf_header(files["F32"])
    kv, names = header.values, {t.name for t in header.tensors}
    config = json.loads((pair.rlhf / "config.json").read_text())
    assert ("output.weight" in names) == (not config.get("tie_word_embeddings", False))
    if key.startswith("llama3"):
        assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "llama-bpe"
        assert "rope_freqs.weight" in names
        assert (
            kv["llama.attention.key_length"]
            == config["head_dim"]
            != config["hidden_size"] // config["num_attention_heads"]
        )
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
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times ünïcode?"},
    ]
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
    src = llama_cpp_src()
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
    from expo_gguf.gguf_file.header import read_gguf_header

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


@pytest.fixture
def llama3_copy(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """A fresh tied Llama-3-shaped pair to edit (0.2 s once the tokenizer is cached)."""
    return _make(tmp_path_factory, "llama3-tied")


def _build_q8(pair: Pair, out: Path, *extra: str) -> tuple[Path, str]:
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "-q", "q8_0", "--outdir", out, *extra)
    assert res.exit_code == 0, res.output
    return next(out.glob("*.gguf")), " ".join(res.output.split())


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text("utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), "utf-8")


def test_end_ids_llama_cpp_does_not_know_get_the_keys(llama3_copy, tmp_path):
    """Five end ids: eos, then eot and eom go to ids llama.cpp cannot recognise by their text; the
    one left over is named in a warning, and it is the only one that does not stop generation."""
    gen = llama3_copy.rlhf / "generation_config.json"
    _edit(gen, eos_token_id=[128001, 128008, 128009, 128002, 128003])
    path, output = _build_q8(llama3_copy, tmp_path)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    kv = llm.metadata
    assert kv["tokenizer.ggml.eos_token_id"] == "128009"
    assert {kv["tokenizer.ggml.eot_token_id"], kv["tokenizer.ggml.eom_token_id"]} == {"128008", "128002"}
    assert "(id 128003) ends generation" in output and "llama.cpp will not stop at it" in output
    eog = {t: bool(llama_cpp.llama_vocab_is_eog(vocab, t)) for t in (128001, 128002, 128003, 128008, 128009)}
    assert eog == {128001: True, 128002: True, 128003: False, 128008: True, 128009: True}


@pytest.mark.parametrize("post,config_bos,want", [("template", False, True), ("bytelevel", True, False)])
def test_bos_follows_the_post_processor_as_transformers_does(llama3_copy, tmp_path, post, config_bos, want):
    tok_path = llama3_copy.rlhf / "tokenizer.json"
    tok = json.loads(tok_path.read_text("utf-8"))
    if post == "bytelevel":
        tok["post_processor"] = {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        }
        tok_path.write_text(json.dumps(tok), "utf-8")
    _edit(llama3_copy.rlhf / "tokenizer_config.json", add_bos_token=config_bos)
    path, _ = _build_q8(llama3_copy, tmp_path)
    kv = llama_cpp.Llama(str(path), vocab_only=True, verbose=False).metadata
    assert kv["tokenizer.ggml.add_bos_token"] == str(want).lower()
    hf = transformers.AutoTokenizer.from_pretrained(llama3_copy.rlhf)
    assert (hf.encode("hi")[0] == 128000) == want


def test_merges_as_pairs_and_a_saved_tied_lm_head(llama3_copy, tmp_path):
    """transformers >= 4.45 writes merges as pairs; some exporters save the tied lm_head anyway:
    the same GGUF tensors and vocabulary as the plain checkpoint."""
    from safetensors.torch import load_file, save_file

    from expo_gguf.gguf_file.header import read_gguf_header

    plain, _ = _build_q8(llama3_copy, tmp_path / "plain")
    tok_path = llama3_copy.rlhf / "tokenizer.json"
    tok = json.loads(tok_path.read_text("utf-8"))
    tok["model"]["merges"] = [m.split(" ") for m in tok["model"]["merges"]]
    tok_path.write_text(json.dumps(tok), "utf-8")
    for d in (llama3_copy.sft, llama3_copy.rlhf):
        index = json.loads((d / "model.safetensors.index.json").read_text())
        shard = d / index["weight_map"]["model.embed_tokens.weight"]
        tensors = load_file(shard)
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        save_file(tensors, shard, metadata={"format": "pt"})
        index["weight_map"]["lm_head.weight"] = shard.name
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    edited, _ = _build_q8(llama3_copy, tmp_path / "edited")
    a, b = read_gguf_header(plain), read_gguf_header(edited)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors] and "output.weight" not in {
        t.name for t in b.tensors
    }
    assert a.values["tokenizer.ggml.merges"] == b.values["tokenizer.ggml.merges"]


def test_llama3_pre_tokenizer_hash_is_llama_cpp_s(llama3_built):
    """llama.cpp's converter recognises a pre-tokenizer by hashing what transformers makes of a test
    string; the tokenizer.json we call llama-bpe must give the hash it calls llama-bpe."""
    import hashlib
    import re

    pair, _ = llama3_built
    base = (llama_cpp_src() / "conversion" / "base.py").read_text("utf-8")
    chktxt = re.search(r"chktxt = (['\"].*['\"])\n", base).group(1)
    known = re.findall(r'chkhsh == "([0-9a-f]{64})":\n\s*# ref: [^\n]*\n\s*res = "llama-bpe"', base)
    assert known
    tokens = transformers.AutoTokenizer.from_pretrained(pair.rlhf).encode(eval(chktxt))  # a Python literal
    assert hashlib.sha256(str(tokens).encode()).hexdigest() in known


def test_llama3_k_quant_runs(llama3_copy, tmp_path):
    """rope_freqs and the tied token_embd through llama.cpp's own quantizer (Q4_K_M), then evaluated."""
    res = run_cli(
        "build", "--sft", llama3_copy.sft, "--rlhf", llama3_copy.rlhf, "-q", "f32,q4_k_m", "--outdir", tmp_path
    )
    assert res.exit_code == 0, res.output
    files = {p.stem.rsplit("-", 1)[1]: p for p in tmp_path.glob("*.gguf")}
    ids = [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13]
    ref, got = _llama_logits(files["F32"], ids), _llama_logits(files["Q4_K_M"], ids)
    assert np.isfinite(got).all() and np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9


def test_texts_we_leave_to_llama_cpp_do_end_generation(llama3_copy, tmp_path):
    """vocab.LLAMA_CPP_EOG_TEXTS is our copy of llama.cpp's list of end texts (ids with them get no
    key when keys run short): every one must end generation in the llama.cpp we ship with."""
    from expo_gguf.source.vocab import LLAMA_CPP_EOG_TEXTS

    texts = sorted(LLAMA_CPP_EOG_TEXTS - {"<|eot_id|>", "<|end_of_text|>"})  # already in the vocabulary
    first = 128010  # <|reserved_special_token_5|> on: renamed, as a checkpoint would name its own
    tok_path, cfg_path = llama3_copy.rlhf / "tokenizer.json", llama3_copy.rlhf / "tokenizer_config.json"
    tok, cfg = json.loads(tok_path.read_text("utf-8")), json.loads(cfg_path.read_text("utf-8"))
    for i, text in enumerate(texts):
        next(a for a in tok["added_tokens"] if a["id"] == first + i)["content"] = text
        cfg["added_tokens_decoder"][str(first + i)]["content"] = text
    tok_path.write_text(json.dumps(tok), "utf-8")
    cfg_path.write_text(json.dumps(cfg), "utf-8")
    _edit(llama3_copy.rlhf / "generation_config.json", eos_token_id=128009)
    path, _ = _build_q8(llama3_copy, tmp_path)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for i, text in enumerate(texts):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == [first + i]
        assert llama_cpp.llama_vocab_is_eog(vocab, first + i), text
    assert not llama_cpp.llama_vocab_is_eog(vocab, first + len(texts))  # an untouched reserved token
