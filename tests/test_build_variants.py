"""Several alphas from one read, presets, chat templates, tokens beyond the embedding rows, and the
refusals that keep a GGUF from silently differing from its checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from test_build_errors import assert_clean_failure

from expo_gguf.gguf_file.header import read_gguf_header

from conftest import Pair, llama_cpp_src, make_family_pair, run_cli, synthetic, use_hf_cache

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_several_alphas_equal_separate_builds(pair, tmp_path):
    """One read, one file per (alpha, quant), each byte-identical to its own single-alpha build."""
    multi = tmp_path / "multi"
    res = run_cli(
        "build",
        "--sft",
        pair.sft,
        "--rlhf",
        pair.rlhf,
        "--alpha",
        "0.1,0.5",
        "-q",
        "q8_0,q4_k_m",
        "--outdir",
        multi,
        "--name",
        "M",
    )
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in multi.glob("*.gguf"))
    assert names == ["M-a0.1-Q4_K_M.gguf", "M-a0.1-Q8_0.gguf", "M-a0.5-Q4_K_M.gguf", "M-a0.5-Q8_0.gguf"]
    assert not list(multi.glob(".*"))  # the per-alpha intermediates are gone
    for alpha in ("0.1", "0.5"):
        single = tmp_path / f"single-{alpha}"
        res = run_cli(
            "build",
            "--sft",
            pair.sft,
            "--rlhf",
            pair.rlhf,
            "--alpha",
            alpha,
            "-q",
            "q8_0,q4_k_m",
            "--outdir",
            single,
            "--name",
            "M",
        )
        assert res.exit_code == 0, res.output
        for quant in ("Q8_0", "Q4_K_M"):
            assert _sha(multi / f"M-a{alpha}-{quant}.gguf") == _sha(single / f"M-{quant}.gguf"), (alpha, quant)
        assert read_gguf_header(single / "M-Q8_0.gguf").values["expo.alpha"] == pytest.approx(float(alpha))
    assert _sha(multi / "M-a0.1-Q8_0.gguf") != _sha(multi / "M-a0.5-Q8_0.gguf")


@pytest.mark.parametrize(
    "alpha,needle", [("0.1,x", "comma-separated list of numbers"), ("0.3,0.30", "each alpha once"), ("nan", "finite")]
)
def test_bad_alpha_lists(pair, tmp_path, alpha, needle):
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--alpha", alpha, "--outdir", tmp_path / "o")
    assert_clean_failure(res, tmp_path / "o", needle, code=2)


def test_preset_fills_pair_alpha_and_name_from_the_hf_cache(tmp_path, tmp_path_factory, monkeypatch):
    """--preset zephyr-7b-beta: the repo ids resolve in a fake local HF cache, the card's alpha and
    the authors' model name are used; every one of them can still be overridden."""
    sft, rlhf = synthetic.make_pair(tmp_path_factory.mktemp("zephyr"), "tiny", seed=2, family="zephyr")
    use_hf_cache(
        tmp_path / "hub", monkeypatch, {"HuggingFaceH4/zephyr-7b-beta": rlhf, "HuggingFaceH4/mistral-7b-sft-beta": sft}
    )
    res = run_cli("build", "--preset", "zephyr-7b-beta", "-q", "q8_0", "--outdir", tmp_path / "m")
    assert res.exit_code == 0, res.output
    out = tmp_path / "m" / "zephyr-7b-beta-ExPO-Q8_0.gguf"
    kv = read_gguf_header(out).values
    assert kv["expo.alpha"] == pytest.approx(0.1)
    assert kv["expo.rlhf"] == "HuggingFaceH4/zephyr-7b-beta" and kv["expo.sft"] == "HuggingFaceH4/mistral-7b-sft-beta"
    res = run_cli(
        "build",
        "--preset",
        "zephyr-7b-beta",
        "--alpha",
        "0.2",
        "--name",
        "Z",
        "-q",
        "q8_0",
        "--outdir",
        tmp_path / "m",
        "--dry-run",
    )
    assert res.exit_code == 0 and "Z alpha=0.2" in " ".join(res.output.split()), res.output
    for extra, name in (
        (["--alpha", "0.2"], "zephyr-7b-beta-ExPO-a0.2-Q8_0.gguf"),  # not the published model
        (["--alpha", "0.1,0.3"], "zephyr-7b-beta-ExPO-a0.1-Q8_0.gguf"),
        (["--sft", str(sft)], "zephyr-7b-beta-ExPO-Q8_0.gguf"),
    ):  # own SFT: the folder's name
        res = run_cli(
            "build", "--preset", "zephyr-7b-beta", *extra, "-q", "q8_0", "--outdir", tmp_path / "m2", "--dry-run"
        )
        assert res.exit_code == 0 and name in " ".join(res.output.split()), (extra, res.output)
    res = run_cli("build", "--preset", "no-such-model", "--outdir", tmp_path / "m3")
    assert_clean_failure(res, tmp_path / "m3", "no preset 'no-such-model'; presets: starling-lm-7b-beta")


def test_preset_template_only_for_its_own_checkpoint_without_one(tmp_path, tmp_path_factory, monkeypatch):
    """tulu-2-dpo-13b: an upload without a chat template gets the format the model card documents
    ("<|user|>\\nYour message here!\\n<|assistant|>\\n", newline after <|assistant|>); the
    checkpoint's own template still wins, and another RLHF model never gets the preset's."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    sft, rlhf = synthetic.make_pair(tmp_path_factory.mktemp("tulu"), "tiny", seed=4, family="zephyr")
    own = json.loads((rlhf / "tokenizer_config.json").read_text())["chat_template"]
    bare = Path(shutil.copytree(rlhf, tmp_path / "tulu-2-dpo-13b"))
    _drop_template(bare)
    use_hf_cache(tmp_path / "hub", monkeypatch, {"allenai/tulu-2-13b": sft, "allenai/tulu-2-dpo-13b": bare})
    res = run_cli("build", "--preset", "tulu-2-dpo-13b", "-q", "q8_0", "--outdir", tmp_path / "m")
    assert res.exit_code == 0, res.output
    assert "allenai/tulu-2-dpo-13b has no chat template; writing the preset's" in " ".join(res.output.split())
    kv = read_gguf_header(tmp_path / "m" / "tulu-2-dpo-13b-ExPO-Q8_0.gguf").values
    fmt = Jinja2ChatFormatter(kv["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    prompt = fmt(messages=[{"role": "user", "content": "Your message here!"}]).prompt
    assert prompt == "<|user|>\nYour message here!\n<|assistant|>\n"
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert fmt(messages=turns).prompt == "<|user|>\nHi\n<|assistant|>\nHello.</s>\n<|user|>\nBye\n<|assistant|>\n"

    # the same repo shipping its own template: that one, byte for byte
    use_hf_cache(tmp_path / "hub2", monkeypatch, {"allenai/tulu-2-13b": sft, "allenai/tulu-2-dpo-13b": rlhf})
    res = run_cli("build", "--preset", "tulu-2-dpo-13b", "-q", "q8_0", "--outdir", tmp_path / "m2")
    assert res.exit_code == 0, res.output
    assert read_gguf_header(tmp_path / "m2" / "tulu-2-dpo-13b-ExPO-Q8_0.gguf").values["tokenizer.chat_template"] == own

    res = run_cli("build", "--preset", "tulu-2-dpo-13b", "--rlhf", bare, "-q", "q8_0", "--outdir", tmp_path / "m3")
    assert_clean_failure(res, tmp_path / "m3", "has no chat template", code=2)


@pytest.fixture
def zephyr(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    sft, rlhf = synthetic.make_pair(tmp_path_factory.mktemp("zephyr"), "tiny", seed=3, family="zephyr")
    return Pair(Path(shutil.copytree(sft, tmp_path / "sft")), Path(shutil.copytree(rlhf, tmp_path / "rlhf")))


def _drop_template(d: Path) -> None:
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_missing_template_names_the_option_and_the_option_works(zephyr, tmp_path):
    _drop_template(zephyr.rlhf)
    out = tmp_path / "out"
    res = run_cli("build", "--sft", zephyr.sft, "--rlhf", zephyr.rlhf, "-q", "q8_0", "--outdir", out)
    assert_clean_failure(res, out, "has no chat template", code=2)
    assert "--chat-template FILE" in res.output
    template = tmp_path / "t.jinja"
    template.write_bytes(b"{% for m in messages %}<|{{ m['role'] }}|>\r\n{{ m['content'] }}</s>\n{% endfor %}")
    res = run_cli(
        "build", "--sft", zephyr.sft, "--rlhf", zephyr.rlhf, "-q", "q8_0", "--outdir", out, "--chat-template", template
    )
    assert res.exit_code == 0, res.output
    kv = read_gguf_header(next(out.glob("*.gguf"))).values
    assert kv["tokenizer.chat_template"].encode() == template.read_bytes()  # byte for byte, \r\n kept


def test_a_template_that_does_not_parse_is_refused(zephyr, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}")  # no endfor
    res = run_cli(
        "build",
        "--sft",
        zephyr.sft,
        "--rlhf",
        zephyr.rlhf,
        "-q",
        "q8_0",
        "--outdir",
        tmp_path / "o",
        "--chat-template",
        bad,
    )
    assert_clean_failure(res, tmp_path / "o", "is not valid Jinja (line 1", code=2)


def test_chat_template_jinja_file_is_used(zephyr, tmp_path):
    _drop_template(zephyr.rlhf)
    (zephyr.rlhf / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    res = run_cli("build", "--sft", zephyr.sft, "--rlhf", zephyr.rlhf, "-q", "q8_0", "--outdir", tmp_path / "o")
    assert res.exit_code == 0, res.output
    kv = read_gguf_header(next((tmp_path / "o").glob("*.gguf"))).values
    assert kv["tokenizer.chat_template"] == "{{ messages[0]['content'] }}"


def test_unknown_pre_tokenizer_is_refused(tmp_path, tmp_path_factory):
    pair = make_family_pair(tmp_path_factory.mktemp("l3"), "llama3", tied=True, seed=4)
    sft, rlhf = pair.sft, pair.rlhf
    tok = json.loads((rlhf / "tokenizer.json").read_text("utf-8"))
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,2}|\s+"  # Qwen-like digits
    (rlhf / "tokenizer.json").write_text(json.dumps(tok), "utf-8")
    res = run_cli("build", "--sft", sft, "--rlhf", rlhf, "-q", "q8_0", "--outdir", tmp_path / "o")
    assert_clean_failure(res, tmp_path / "o", "pre-tokenizer not recognised", code=2)


def test_tokens_beyond_the_embedding_rows_are_dropped(pair_copy, tmp_path):
    """Starling-LM-7B-alpha declares <sep> as id 32002 of a 32002-row matrix."""
    cfg_path = pair_copy.rlhf / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["added_tokens_decoder"]["32002"] = {
        "content": "<sep>",
        "special": True,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
    }
    cfg_path.write_text(json.dumps(cfg))
    res = run_cli("build", "--sft", pair_copy.sft, "--rlhf", pair_copy.rlhf, "-q", "q8_0", "--outdir", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "'<sep>' (id 32002) is beyond the 32002 embedding rows; dropped" in " ".join(res.output.split())
    kv = read_gguf_header(next((tmp_path / "o").glob("*.gguf"))).values
    assert len(kv["tokenizer.ggml.tokens"]) == 32002 and "<sep>" not in kv["tokenizer.ggml.tokens"]


def test_rope_freqs_equal_llama_cpp_converter():
    """Our numpy derivation against the converter's own torch code (the sdist's conversion/llama.py)."""
    import sys
    import types

    import numpy as np

    from expo_gguf.convert.mapping import hparams_from_config, rope_freqs

    src = llama_cpp_src()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    try:
        llama = pytest.importorskip("conversion.llama")
    finally:
        del sys.path[:2]
    for theta, head_dim, orig, factor in [(500000.0, 128, 8192, 8.0), (500000.0, 32, 64, 8.0), (10000.0, 64, 512, 4.0)]:
        rope = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": orig,
        }
        config = {
            "architectures": ["LlamaForCausalLM"],
            "num_attention_heads": 4,
            "hidden_size": 4 * head_dim,
            "num_hidden_layers": 1,
            "intermediate_size": 8,
            "vocab_size": 8,
            "rope_theta": theta,
            "rope_scaling": rope,
            "head_dim": head_dim,
        }
        fake = types.SimpleNamespace(
            rope_parameters=dict(rope, rope_theta=theta), hparams=config, format_tensor_name=lambda _t: "rope_freqs"
        )
        ((_, theirs),) = list(llama.LlamaModel.generate_extra_tensors(fake))
        ours = rope_freqs(hparams_from_config(config, "test"))
        assert ours.tobytes() == theirs.numpy().astype(np.float32).tobytes()
        assert len(set(ours.tolist())) > 2  # 1, factor, and smoothed values in between


def test_dry_run_lists_every_alpha(pair, tmp_path):
    res = run_cli(
        "build",
        "--sft",
        pair.sft,
        "--rlhf",
        pair.rlhf,
        "--alpha",
        "0.1,0.3",
        "-q",
        "q8_0,q4_k_m",
        "--outdir",
        tmp_path / "o",
        "--dry-run",
    )
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "alpha=0.1,0.3" in text, res.output
    for a in ("0.1", "0.3"):
        for q in ("Q8_0", "Q4_K_M"):
            assert f"Starling-LM-7B-beta-ExPO-a{a}-{q}.gguf" in text
    assert text.count("(temporary)") == 2  # one 16-bit intermediate per alpha, for the K-quant
    assert not (tmp_path / "o").exists()


def _set_rope(d: Path, **keys: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k in ("rope_scaling", "rope_parameters", "rope_theta"):
        cfg.pop(k, None)
    cfg.update(keys)
    (d / "config.json").write_text(json.dumps(cfg))


def test_transformers_5_rope_parameters_match_an_older_config(pair_copy, tmp_path):
    """A DPO run saved by transformers 5 (rope_parameters, type default) against an SFT saved by 4.x
    (rope_scaling null, rope_theta): the same model; a real difference is named readably."""
    _set_rope(pair_copy.sft, rope_scaling=None, rope_theta=10000.0)
    _set_rope(pair_copy.rlhf, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
    res = run_cli("build", "--sft", pair_copy.sft, "--rlhf", pair_copy.rlhf, "-q", "q8_0", "--outdir", tmp_path / "o")
    assert res.exit_code == 0, res.output
    _set_rope(pair_copy.rlhf, rope_parameters={"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0})
    res = run_cli("build", "--sft", pair_copy.sft, "--rlhf", pair_copy.rlhf, "-q", "q8_0", "--outdir", tmp_path / "p")
    assert_clean_failure(res, tmp_path / "p", "rope_scaling none (SFT) vs linear factor=2 (RLHF)", code=2)


def test_template_file_beats_tokenizer_config_as_in_transformers(zephyr, tmp_path):
    (zephyr.rlhf / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    res = run_cli("build", "--sft", zephyr.sft, "--rlhf", zephyr.rlhf, "-q", "q8_0", "--outdir", tmp_path / "o")
    assert res.exit_code == 0 and "chat_template.jinja and tokenizer_config.json's chat_template differ" in " ".join(
        res.output.split()
    ), res.output
    import transformers

    expected = transformers.AutoTokenizer.from_pretrained(zephyr.rlhf).chat_template
    assert read_gguf_header(next((tmp_path / "o").glob("*.gguf"))).values["tokenizer.chat_template"] == expected
