"""Chat on the Starling-shaped GGUF that ``expo-gguf build`` makes from the tiny synthetic pair.

The weights are random, so replies are noise; what is checked is the format around them:
the OpenChat prompt, its token ids (as openchat's model card lists them), and the stop set.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from expo_gguf import ChatModel, RunOptions, Sampling, load_model
from expo_gguf.cli import cli

from conftest import synthetic

pytestmark = pytest.mark.slow

END_OF_TURN = 32000
# openchat-3.5-0106 / Starling-LM-7B-beta model card: "GPT4 Correct User: Hello<|end_of_turn|>GPT4
# Correct Assistant:" tokenized by the Hugging Face tokenizer.
CARD_IDS = [1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747]


@pytest.fixture(scope="module")
def starling_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mistral_common") is None:
        pytest.skip("the synthetic pair needs mistral-common for tokenizer.model")
    tmp = tmp_path_factory.mktemp("starling")
    sft, rlhf = synthetic.make_pair(tmp / "pair", "tiny", seed=0)
    out = tmp / "models"
    result = CliRunner().invoke(
        cli, ["build", "--sft", str(sft), "--rlhf", str(rlhf), "-q", "q8_0", "--outdir", str(out)]
    )
    assert result.exit_code == 0, result.output
    (gguf,) = out.glob("*.gguf")
    return gguf


@pytest.fixture(scope="module")
def model(starling_gguf: Path) -> ChatModel:
    m = load_model(starling_gguf, RunOptions(n_ctx=256, threads=1), seed=0)
    yield m
    m.close()


def test_prompt_is_openchat(model: ChatModel) -> None:
    one = [{"role": "user", "content": "Hello"}]
    assert model.render(one) == "<s>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant:"
    assert model.tokenize(one) == CARD_IDS  # one BOS, <|end_of_turn|> as the single id 32000
    multi = one + [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "How are you?"}]
    assert model.render(multi) == (
        "<s>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant: Hi<|end_of_turn|>"
        "GPT4 Correct User: How are you?<|end_of_turn|>GPT4 Correct Assistant:"
    )
    assert model.tokenize(multi)[: len(CARD_IDS)] == CARD_IDS  # turn 2 extends turn 1: KV reuse


def test_stop_set_and_no_control_text(model: ChatModel) -> None:
    assert END_OF_TURN in model.stop_ids
    for control in (1, 2, END_OF_TURN, 32001):  # <s>, </s>, <|end_of_turn|>, <|pad_0|>
        assert model.piece(control) == b""
    reply = "".join(model.stream([{"role": "user", "content": "Hello"}], Sampling(temp=0.0, seed=0, max_tokens=32)))
    assert model.last_stats.generated > 0
    for text in ("<|", "<s>", "</s>", "GPT4 Correct"):
        assert text not in reply


def test_one_shot_cli(starling_gguf: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "chat",
            str(starling_gguf),
            "-p",
            "Hello",
            "--temp",
            "0",
            "--max-tokens",
            "16",
            "--ctx",
            "256",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "<|end_of_turn|>" not in result.output
