"""The built GGUF against independent implementations: HF transformers for the maths and layout,
sentencepiece/HF for tokenization, HF's apply_chat_template for the prompt."""

from __future__ import annotations

import glob

import llama_cpp
import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.reference]

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ALPHA = 0.5
PROMPTS = [
    [1, 415, 5565, 302, 4843, 349, 5465, 28723],
    [1, 420, 6687, 28781, 3198, 3123, 1247, 28747, 6312, 32000, 420, 6687, 28781, 3198, 3123, 21631, 28747],
]
HARD_STRINGS = [
    "Hello world",
    "   three leading spaces and trailing  ",
    "tabs\tand\nnew\n\nlines\r\n",
    "digits 1234567890 and 3.14159, 1e-9",
    "unicode: héllo wörld — 你好，世界 🤗 ñandú Ελληνικά",
    "zero‑width joiner 🧑‍💻 and combining é",
    "multiple     spaces\u00a0nbsp",
    "GPT4 Correct User: hi<|end_of_turn|>GPT4 Correct Assistant:",
    "<|end_of_turn|><|pad_0|> stuck<|end_of_turn|>together",
]


def _state_dict(d):
    from safetensors.torch import load_file

    sd = {}
    for f in glob.glob(f"{d}/*.safetensors"):
        sd.update(load_file(f))
    return sd


@pytest.fixture(scope="module")
def hf_model(pair):
    """MistralForCausalLM with the extrapolated weights, computed independently in torch as the
    ExPO authors' script does (bf16 tensors: the build's default maths on this bf16 pair)."""
    r, s = _state_dict(pair.rlhf), _state_dict(pair.sft)
    weights = {k: (r[k] + ALPHA * (r[k] - s[k])).float() for k in r}
    config = transformers.AutoConfig.from_pretrained(pair.rlhf)
    model = transformers.MistralForCausalLM(config).float().eval()
    model.load_state_dict(weights)
    return model


def _llama_logits(path, ids):
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


def _rel_rms(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(((got - ref) ** 2).mean() / (ref**2).mean()))


# Relative RMS error of llama.cpp's logits against transformers', as measured on the tiny pair
# (both prompts): F32 5e-7, F16 4e-4, Q8_0 0.017, Q4_K_M 0.16, Q4_0 0.23. Bounds leave ~2x margin;
# random weights make 4-bit errors larger than on a trained model.
BOUNDS = {"F32": 1e-5, "F16": 2e-3, "Q8_0": 0.05, "Q4_K_M": 0.35, "Q4_0": 0.45}


@pytest.mark.parametrize("ids", PROMPTS)
def test_logits_match_transformers(built, hf_model, ids):
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].numpy()
    f32 = _llama_logits(built["F32"], ids)
    assert np.abs(f32 - ref).max() < 1e-4 * ref.std()  # measured 3e-6: float32 summation order
    for quant, bound in BOUNDS.items():
        got = _llama_logits(built[quant], ids)  # quantized files evaluate many tokens, not one
        assert np.isfinite(got).all()
        assert _rel_rms(got, ref) < bound, quant
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95, quant


@pytest.fixture(scope="module")
def vocab_llama(built):
    return llama_cpp.Llama(str(built["Q8_0"]), vocab_only=True, verbose=False)


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_tokens_match_sentencepiece_and_hf(pair, vocab_llama, text):
    hf = transformers.AutoTokenizer.from_pretrained(pair.rlhf)
    ours_special = vocab_llama.tokenize(text.encode(), add_bos=False, special=True)
    assert ours_special == hf.encode(text, add_special_tokens=False)
    if "<|" not in text:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(pair.rlhf / "tokenizer.model"))
        assert vocab_llama.tokenize(text.encode(), add_bos=False, special=False) == sp.encode(text)


def test_end_of_turn_ends_generation(vocab_llama):
    vocab = llama_cpp.llama_model_get_vocab(vocab_llama.model)
    assert vocab_llama.tokenize(b"<|end_of_turn|>", add_bos=False, special=True) == [32000]
    assert llama_cpp.llama_vocab_is_eog(vocab, 32000)
    assert llama_cpp.llama_vocab_is_control(vocab, 32000)
    assert llama_cpp.llama_vocab_is_control(vocab, 32001)
    assert vocab_llama.token_eos() == 32000
    # a control token is never printed as text in a reply
    assert vocab_llama.detokenize([32000], special=False) == b""


def test_template_matches_apply_chat_template(pair, vocab_llama):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = vocab_llama.metadata
    bos = vocab_llama.detokenize([vocab_llama.token_bos()], special=True).decode()
    eos = vocab_llama.detokenize([vocab_llama.token_eos()], special=True).decode()
    fmt = Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    hf = transformers.AutoTokenizer.from_pretrained(pair.rlhf)
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times ünïcode?"},
    ]
    ours = fmt(messages=messages).prompt
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours == expected
    assert expected.endswith("<|end_of_turn|>GPT4 Correct Assistant:")
