"""``expo-gguf chat`` and ``serve`` through click's CliRunner, on the real SmolLM2 model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from expo_gguf.cli import cli
from expo_gguf.cli.chat import find_default_model
from expo_gguf.errors import ExpoError
from expo_gguf.gguf_file.header import open_gguf, trained_context_length

from conftest import one_error_line, smollm2

FAST = ["--temp", "0", "--seed", "0", "--ctx", "512", "--threads", "1"]


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def small_gguf(path: Path) -> Path:
    """A valid but tiny GGUF (not a loadable model) for the file checks."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("a", np.ones((64, 64), np.float32))
    writer.add_tensor("b", np.ones((64,), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_one_shot_is_greedy_and_deterministic() -> None:
    args = ["chat", str(smollm2()), "-p", "What is 2 + 2?", "--max-tokens", "24", *FAST]
    first, second = run(*args), run(*args)
    assert first.exit_code == 0, first.output
    assert first.output.strip() and first.output == second.output
    assert "<|im_end|>" not in first.output and ">>>" not in first.output


def test_piped_stdin_is_one_shot_and_appended_to_prompt() -> None:
    piped = run("chat", str(smollm2()), "--max-tokens", "16", *FAST, input="Say hello.\n")
    assert piped.exit_code == 0, piped.output
    assert piped.output.strip() and ">>>" not in piped.output
    both = run(
        "chat", str(smollm2()), "-p", "Summarise:", "--max-tokens", "16", *FAST, input="The cat sat on the mat.\n"
    )
    assert both.exit_code == 0 and both.output.strip()
    assert both.output != piped.output


def test_interactive_session_with_scripted_stdin(tmp_path: Path) -> None:
    saved = tmp_path / "chat.json"
    script = "\n".join(["/set max_tokens 12", "Hello!", "/stats", "/show", f"/save {saved}", "/exit"])
    result = run("chat", str(smollm2()), "-i", "--plain", *FAST, input=script + "\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Smollm2 135M" in out and "Q4_1" in out and "CPU only" in out  # banner
    assert "ttft" in out and "tok/s" in out and "/512" in out  # status line after the reply
    assert "evaluated" in out and "stopped:" in out  # /stats
    assert "stop ids" in out and "max_tokens" in out  # /show: model and settings
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"]


def test_context_overflow_drops_oldest_then_refuses_huge_message() -> None:
    turns = [f"Tell me fact number {i} about the moon." for i in range(8)]
    script = "\n".join([*turns, "word " * 400, "/exit"]) + "\n"
    result = run(
        "chat",
        str(smollm2()),
        "-i",
        "--plain",
        "--max-tokens",
        "24",
        *FAST[:4],
        "--ctx",
        "256",
        "--threads",
        "1",
        input=script,
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("context full: dropped the") == 1
    assert "message too long" in result.output and "Traceback" not in result.output


def test_bad_model_paths_are_one_line_exit_2(tmp_path: Path) -> None:
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    truncated = tmp_path / "cut.gguf"
    data = small_gguf(tmp_path / "whole.gguf").read_bytes()
    truncated.write_bytes(data[: len(data) - 100])
    cases = {
        str(tmp_path / "missing.gguf"): "no such file",
        str(not_gguf): "is not a GGUF file",
        str(truncated): "is truncated",
        str(tmp_path / "whole.gguf"): "llama.cpp could not load",
        str(tmp_path): "not a file",
    }
    for path, message in cases.items():
        result = run("chat", path, "-p", "hi")
        assert result.exit_code == 2, (path, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_open_gguf_checks(tmp_path: Path) -> None:
    whole = small_gguf(tmp_path / "whole.gguf")
    assert [t.name for t in open_gguf(whole).tensors] == ["a", "b"]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:-8])
    with pytest.raises(ExpoError, match="truncated"):
        open_gguf(cut)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ExpoError, match="empty file"):
        open_gguf(tmp_path / "empty.gguf")


def test_default_model_is_newest_under_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("chat", "-p", "hi")
    assert result.exit_code == 2 and "no .gguf in ./models" in result.output
    assert "expo-gguf build --quant q8_0" in result.output
    (tmp_path / "models" / "sub").mkdir(parents=True)
    old, new = tmp_path / "models" / "a.gguf", tmp_path / "models" / "sub" / "b.gguf"
    old.write_bytes(b"GGUF")
    new.write_bytes(b"GGUF")
    os.utime(old, (1, 1))
    assert find_default_model() == Path("models/sub/b.gguf")
    # What a build in progress leaves there, all newer than b.gguf: never picked.
    for name in (".Starling-ExPO-F16.intermediate.gguf", "Starling-ExPO-Q8_0.gguf.part", ".hidden/c.gguf", "notes.txt"):
        (tmp_path / "models" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "models" / name).write_bytes(b"GGUF")
    os.utime(new, (2, 2))
    assert find_default_model() == Path("models/sub/b.gguf")
    new.unlink()
    assert find_default_model() == Path("models/a.gguf")
    old.unlink()
    result = run("chat", "-p", "hi")
    assert result.exit_code == 2 and "no .gguf in ./models" in result.output


def test_trained_context_length_from_the_header(tmp_path: Path) -> None:
    """The header walk agrees with llama.cpp's loader, wherever the key sits."""
    import llama_cpp

    smollm = smollm2()
    loaded = llama_cpp.llama_model_load_from_file(str(smollm).encode(), llama_cpp.llama_model_default_params())
    try:
        assert trained_context_length(smollm) == llama_cpp.llama_model_n_ctx_train(loaded) == 8192
    finally:
        llama_cpp.llama_model_free(loaded)
    late = gguf.GGUFWriter(tmp_path / "late.gguf", "llama")  # arrays of every kind come first
    late.add_token_list([f"tok{i}" for i in range(3000)])
    late.add_token_scores([0.5] * 3000)
    late.add_array("test.nested", [[1, 2], [3]])
    late.add_bool("test.flag", True)
    late.add_context_length(1234)
    late.add_tensor("a", np.ones((4,), np.float32))
    late.write_header_to_file()
    late.write_kv_data_to_file()
    late.write_tensors_to_file()
    late.close()
    assert trained_context_length(tmp_path / "late.gguf") == 1234
    cut = tmp_path / "cut.gguf"
    cut.write_bytes((tmp_path / "late.gguf").read_bytes()[:2000])
    with pytest.raises(ExpoError, match="damaged"):  # a cut file: one clear line, not a guess
        trained_context_length(cut)
    absurd = bytearray((tmp_path / "late.gguf").read_bytes())
    absurd[24:32] = (2**62).to_bytes(8, "little")  # the first key's length
    (tmp_path / "absurd.gguf").write_bytes(absurd)
    with pytest.raises(ExpoError, match="damaged"):
        trained_context_length(tmp_path / "absurd.gguf")
    assert trained_context_length(small_gguf(tmp_path / "none.gguf")) is None  # no such key
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(ExpoError, match="not a GGUF"):
        trained_context_length(tmp_path / "text.gguf")
    with pytest.raises(ExpoError, match="no such file"):
        trained_context_length(tmp_path / "missing.gguf")


def test_gpu_layers_on_cpu_build_warns() -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has GPU offload")
    result = run("chat", str(smollm2()), "-ngl", "99", "-p", "hi", "--max-tokens", "2", *FAST)
    assert result.exit_code == 0
    assert "no GPU support, -ngl 99 ignored" in result.output and "GGML_CUDA=on" in result.output


def test_context_not_a_multiple_of_256_is_respected() -> None:
    """llama.cpp rounds its context up to 256; llama-cpp-python's buffer holds only what was asked
    for. A prompt between the two must be refused with one line, not crash in the buffer."""
    too_long = run("chat", str(smollm2()), "--ctx", "128", "--max-tokens", "8", *FAST[:4], input="word " * 170)
    assert too_long.exit_code == 2 and "message too long" in too_long.output, too_long.output
    assert "Traceback" not in too_long.output
    fits = run("chat", str(smollm2()), "--ctx", "300", "--max-tokens", "8", *FAST[:4], input="word " * 70)
    assert fits.exit_code == 0 and fits.output.strip(), fits.output


def test_input_that_is_not_utf8_is_one_line_before_loading(tmp_path: Path) -> None:
    """Bug: `-p "Translate:" < latin1.txt` ended in a 39-line UnicodeEncodeError traceback."""
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'[{"role": "user", "content": "caf\xe9"}]')
    bad = latin1.read_bytes().index(b"\xe9")
    model = str(smollm2())
    cases = [
        (["-p", "Translate:"], b"caf\xe9 au lait\n", "cannot read stdin: not UTF-8 text (byte 3)"),
        (["-p", "Translate: caf\udce9"], None, "cannot read -p: not UTF-8 text (byte 14)"),  # argv: surrogates
        (["--system", "\udcff", "-p", "hi"], None, "cannot read --system: not UTF-8 text (byte 0)"),
        (["--load", str(latin1), "-p", "hi"], None, f"cannot read {latin1}: not UTF-8 text (byte {bad})"),
    ]
    for args, stdin, words in cases:
        one_error_line(CliRunner().invoke(cli, ["chat", model, *args, *FAST], input=stdin), words)


def test_settings_errors_give_the_valid_range() -> None:
    one_error_line(run("chat", str(smollm2()), "-p", "hi", "--temp", "-1"), "temp must be >= 0")
    one_error_line(run("chat", str(smollm2()), "-p", "hi", "--top-p", "2"), "top_p must be > 0 and <= 1")


def test_load_starts_from_a_saved_conversation_and_bad_bytes_typed_are_one_line(tmp_path: Path) -> None:
    saved = tmp_path / "chat.json"
    saved.write_text(json.dumps({"messages": [{"role": "system", "content": "Be terse."}, *TURN]}))
    script = b"/show\ncaf\xe9\n/set seed -1\n/exit\n"
    result = CliRunner().invoke(
        cli, ["chat", str(smollm2()), "--load", str(saved), "-i", "--plain", *FAST], input=script
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 messages loaded" in out and re.search(r"system\s+Be terse\.", out) and re.search(r"messages\s+3\b", out)
    assert "error: cannot read your message: not UTF-8 text (byte 3)" in out and "Traceback" not in out
    assert "seed = random" in out
    result = run(
        "chat", str(smollm2()), "--load", str(saved), "--system", "Be kind.", "-i", "--plain", *FAST, input="/show\n"
    )
    assert result.exit_code == 0 and re.search(r"system\s+Be kind\.", result.output)
    assert "Be terse" not in result.output and re.search(r"messages\s+3\b", result.output)


TURN = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."}]


def test_a_cut_one_shot_reply_says_so_on_stderr() -> None:
    result = run("chat", str(smollm2()), "-p", "Count from one to one hundred in words.", "--max-tokens", "5", *FAST)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "(cut at 5 tokens)"
    assert result.stdout.strip() and "cut at" not in result.stdout  # stdout is the reply alone
    whole = run("chat", str(smollm2()), "-p", "Say yes.", "--max-tokens", "200", *FAST)
    assert whole.exit_code == 0 and "cut at" not in whole.stderr
    one = run("chat", str(smollm2()), "-p", "Count to ten.", "--max-tokens", "1", *FAST)
    assert one.exit_code == 0 and one.stderr.strip() == "(cut at 1 token)"  # not "1 tokens"


def test_a_one_shot_reply_stops_at_a_default_length_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --max-tokens a one-shot reply stops at ONE_SHOT_MAX_TOKENS (1024, lowered here so
    the test does not generate a thousand tokens) and says so on stderr; a chat has no default cap."""
    from expo_gguf.cli import chat as chat_cli

    assert chat_cli.ONE_SHOT_MAX_TOKENS == 1024
    assert "Default: -1 in a chat, 1024 for" in " ".join(run("chat", "--help").output.split())
    monkeypatch.setattr(chat_cli, "ONE_SHOT_MAX_TOKENS", 6)
    story = "Write a very long story about a dragon and a knight."
    result = run("chat", str(smollm2()), "-p", story, *FAST)
    assert result.exit_code == 0, result.output
    assert (
        result.stderr.strip() == "(cut at 6 tokens, the one-shot default; --max-tokens N for longer, -1 for no limit)"
    )
    piped = run("chat", str(smollm2()), *FAST, input=story)
    assert piped.exit_code == 0 and "the one-shot default" in piped.stderr
    chat = run("chat", str(smollm2()), "-i", "--plain", *FAST, input="/set\n")
    assert "max_tokens=-1" in chat.output


def test_the_cpu_only_note_is_given_once() -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has GPU offload")
    first, second = (run("chat", str(smollm2()), "-i", "--plain", *FAST, input="/exit\n") for _ in range(2))
    assert first.exit_code == second.exit_code == 0
    assert "note: CPU-only llama-cpp-python build" in first.output
    assert "CPU-only" not in second.output and "CPU only" in second.output  # the banner still says where it runs


def test_a_default_ctx_above_the_trained_length_is_capped_without_a_word(built: dict[str, Path]) -> None:
    """Bug: every chat with a 2048-token model (make demo's) warned "--ctx 4096 is above the trained
    length" though no --ctx was given. A --ctx the user gives is still warned about; under --vs the
    warning names the model it is about."""
    tiny, label = built["Q8_0"], built["Q8_0"].stem
    assert trained_context_length(tiny) == 2048 < 4096 < trained_context_length(smollm2())
    one_shot = ["-p", "hi", "--max-tokens", "2", "--temp", "0", "--threads", "1"]
    quiet = run("chat", str(tiny), *one_shot)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr, quiet.output
    banner = run("chat", str(tiny), "-i", "--plain", "--threads", "1", input="/exit\n")
    assert "ctx 2048" in banner.output and "warning" not in banner.output  # the banner says what is used
    asked = run("chat", str(tiny), "--ctx", "4096", *one_shot)
    assert asked.exit_code == 0 and asked.stderr.count("warning: --ctx 4096 is above the trained length") == 1
    both = run("chat", str(tiny), "--vs", str(smollm2()), *one_shot)
    assert both.exit_code == 0 and "warning" not in both.stderr, both.output
    both = run("chat", str(smollm2()), "--vs", str(tiny), "--ctx", "4096", *one_shot)
    assert both.exit_code == 0, both.output
    said = [line for line in both.stderr.splitlines() if line.startswith("warning")]
    assert said == [f"warning: --ctx 4096 is above {label}'s trained length; using 2048"]
