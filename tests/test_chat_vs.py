"""``chat A --vs B``: two labelled replies per message, a thread per model, /save and /load of both;
with scripted fakes, then on SmolLM2 (one-shot, and a session in a pseudo-terminal)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from test_chat_repl import small_context

from expo_gguf import RunOptions, Sampling, load_model
from expo_gguf._units import human_bytes
from expo_gguf.chat.conversation import load_conversation, save_conversation
from expo_gguf.chat.repl import Backend
from expo_gguf.chat.vs import estimate_memory, run_vs
from expo_gguf.cli import cli

from conftest import run_cli, smollm2
from pty_terminal import Terminal

Message = dict[str, str]


class Fake:
    """Answers "<name> #<n>: <last message>" and records the thread it was shown."""

    def __init__(self, name: str) -> None:
        self.name, self.seen = name, []

    def reply(self, messages: list[Message]) -> Iterator[str]:
        self.seen.append([dict(m) for m in messages])
        yield f"{self.name} #{len(self.seen)}: {messages[-1]['content']}"


def vs(
    *lines: str,
    messages: list[Message] | None = None,
    a: Fake | None = None,
    a_status: Callable[[], str] | None = None,
    b_fit: Callable[[list[Message]], tuple[list[Message], int]] | None = None,
) -> tuple[list[list[Message]], str, Fake, Fake]:
    a, b = a or Fake("alpha"), Fake("beta")
    queue = list(lines)

    def read_line(prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)

    out = io.StringIO()
    backend_a = Backend(reply=a.reply, status=a_status or (lambda: None))
    backend_b = Backend(reply=b.reply, **({"fit": b_fit} if b_fit else {}))
    sides = [("A", Path("a.gguf"), backend_a), ("B", Path("b.gguf"), backend_b)]
    threads = run_vs(
        sides,
        Sampling(),
        console=Console(file=out, width=200),
        threads=[messages or [], messages or []],
        markdown=False,
        read_line=read_line,
    )
    return threads, out.getvalue(), a, b


def test_each_model_answers_in_turn_and_keeps_its_own_thread() -> None:
    threads, out, a, b = vs("hello", "again")
    shown = [line for line in out.splitlines() if line.strip()]
    assert shown == ["A:", "alpha #1: hello", "B:", "beta #1: hello", "A:", "alpha #2: again", "B:", "beta #2: again"]
    assert [m["content"] for m in threads[0]] == ["hello", "alpha #1: hello", "again", "alpha #2: again"]
    assert [m["content"] for m in threads[1]] == ["hello", "beta #1: hello", "again", "beta #2: again"]
    assert b.seen[1][1]["content"] == "beta #1: hello"  # B never sees A's replies
    assert a.seen[1][1]["content"] == "alpha #1: hello"


class Interrupting(Fake):
    """Presses Ctrl+C (a real SIGINT to this process) after its first chunk."""

    def reply(self, messages: list[Message]) -> Iterator[str]:
        self.seen.append([dict(m) for m in messages])
        yield "partial"
        os.kill(os.getpid(), signal.SIGINT)
        yield " more"
        yield " never shown"


def test_ctrl_c_stops_the_turn_and_the_threads_stay_in_step() -> None:
    """Ctrl+C during A's reply keeps A's start and skips B, whose thread gets an empty reply; a
    Ctrl+C between the two replies (here from A's status line) skips B the same way."""
    threads, out, a, b = vs("hello", "again", a=Interrupting("alpha"))
    assert [m["content"] for m in threads[0]] == ["hello", "partial more", "again", "partial more"]
    assert [m["content"] for m in threads[1]] == ["hello", "", "again", ""]
    assert b.seen == [] and out.count("(skipped)") == 2

    def status() -> str:
        os.kill(os.getpid(), signal.SIGINT)
        return "status"

    threads, _, _, _ = vs("hello", a_status=status)
    assert [m["role"] for m in threads[0]] == [m["role"] for m in threads[1]] == ["user", "assistant"]
    assert threads[0][1]["content"] == "alpha #1: hello" and threads[1][1]["content"] == ""


def test_a_message_one_model_cannot_take_goes_to_neither() -> None:
    """B's context is too small for a message: neither model is asked and the threads stay in step;
    a /regen B cannot fit keeps B's old answer while A gives a new one."""
    threads, out, a, b = vs("hi", "x" * 60, "again", b_fit=small_context)
    assert "B: message too long" in out
    assert [m["content"] for m in threads[0]] == ["hi", "alpha #1: hi", "again", "alpha #2: again"]
    assert [m["content"] for m in threads[1]] == ["hi", "beta #1: hi", "again", "beta #2: again"]
    threads, out, a, b = vs("hi", "/system " + "y" * 39, "/regen", b_fit=small_context)
    assert [m["content"] for m in threads[0]] == ["y" * 39, "hi", "alpha #2: hi"]
    assert [m["content"] for m in threads[1]] == ["y" * 39, "hi", "beta #1: hi"]
    assert "message too long" in out and len(b.seen) == 1


def test_commands_apply_to_both(tmp_path: Path) -> None:
    saved = tmp_path / "vs.json"
    threads, out, a, b = vs("/system Be brief.", "hi", "/regen", f"/save {saved}", "/clear", "/show")
    assert out.count("system message set") == 1 and "both conversations cleared" in out
    assert [m["content"] for m in threads[0]] == ["Be brief."] == [m["content"] for m in threads[1]]
    assert len(a.seen) == len(b.seen) == 2  # the message and its /regen, for each model
    assert "saved 2 threads (3, 3 messages)" in out
    data = json.loads(saved.read_text())
    assert [t["model"] for t in data["threads"]] == ["A", "B"]
    assert [m["content"] for m in data["threads"][1]["messages"]] == ["Be brief.", "hi", "beta #2: hi"]
    assert data["messages"] == data["threads"][0]["messages"]
    # a plain chat loads a --vs file as the first model's conversation
    assert load_conversation(saved)[-1]["content"] == "alpha #2: hi"


def test_load_threads_or_one_conversation_for_both(tmp_path: Path) -> None:
    saved = tmp_path / "vs.json"
    vs("one", f"/save {saved}")
    threads, out, _, b = vs(f"/load {saved}", "two")
    assert "loaded 2 threads (2, 2 messages)" in out
    assert [m["content"] for m in threads[1]] == ["one", "beta #1: one", "two", "beta #1: two"]
    plain = tmp_path / "plain.json"
    save_conversation(plain, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], {})
    threads, out, _, _ = vs(f"/load {plain}")
    assert threads[0] == threads[1] == [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    data = json.loads(saved.read_text())
    data["threads"].append(data["threads"][0])
    saved.write_text(json.dumps(data))
    threads, out, _, _ = vs(f"/load {saved}")
    assert "holds 3 threads; this chat has 2 models" in out and threads == [[], []]


def test_memory_estimate_matches_llama_cpp(capsys: pytest.CaptureFixture[str]) -> None:
    """The estimate from the header against the sizes llama.cpp logs when it allocates the KV cache
    (500 -> 512 cells) and the compute and output buffers."""
    estimate = estimate_memory([smollm2()], 500)
    session = load_model(smollm2(), RunOptions(n_ctx=500, threads=1, verbose=True))
    session.close()
    log = capsys.readouterr().err

    def mib(pattern: str) -> float:
        found = re.findall(pattern + r" += *([\d.]+) MiB", log)
        assert found, f"llama.cpp did not log {pattern}"
        return sum(map(float, found))

    assert estimate.kv[0] / 2**20 == pytest.approx(mib(r"llama_kv_cache: size"), abs=0.01)
    buffers = mib(r"CPU compute buffer size") + mib(r"CPU +output buffer size")
    assert estimate.compute[0] / 2**20 == pytest.approx(buffers, rel=0.1)
    assert estimate.files == (smollm2().stat().st_size,)
    assert estimate.total == sum(estimate.files + estimate.kv + estimate.compute)


def test_one_shot_prints_both_replies_under_their_names(smollm2_quants: dict[str, Path]) -> None:
    res = run_cli(
        "chat",
        smollm2(),
        "--vs",
        smollm2_quants["q4_0"],
        "-p",
        "Name a colour.",
        "--temp",
        "0",
        "--max-tokens",
        "12",
        "--ctx",
        "512",
        "--threads",
        "1",
    )
    assert res.exit_code == 0, res.output
    parts = re.split(r"^## (.+)$", res.output, flags=re.M)
    assert parts[1::2] == [smollm2().stem, "smollm2-Q4_0"]
    assert all(reply.strip() for reply in parts[2::2])


def test_vs_in_a_terminal(chat: Callable[..., Terminal], smollm2_quants: dict[str, Path], tmp_path: Path) -> None:
    saved = tmp_path / "vs.json"
    names = [smollm2().stem, "smollm2-Q4_0"]
    term = chat("--vs", smollm2_quants["q4_0"], "--ctx", "512", "--max-tokens", "16")
    banner = term.expect("/help for commands")
    memory = estimate_memory([smollm2(), smollm2_quants["q4_0"]], 512)
    assert f"memory: about {human_bytes(memory.total)} for both" in banner
    assert banner.index("memory: about") < banner.index(f"1. {names[0]}")  # said before loading
    assert names[0] in banner and names[1] in banner
    term.prompt()
    for question in ("Name a colour.", "Name a fruit."):
        term.send(question + "\n")
        term.expect(question)  # readline's echo
        for name in names:
            term.expect(f"{name}:")
            term.expect("tok/s")  # its reply ended with its status line
        term.prompt()
    term.send(f"/save {saved}\n")
    assert "saved 2 threads (4, 4 messages)" in term.prompt()
    term.send("/exit\n")
    assert term.wait() == 0
    assert "Traceback" not in term.text
    threads = json.loads(saved.read_text())["threads"]
    assert [t["model"] for t in threads] == names
    for t in threads:
        assert [m["role"] for m in t["messages"]] == ["user", "assistant"] * 2
        assert all(m["content"] for m in t["messages"])
    assert threads[0]["messages"][0] == threads[1]["messages"][0]


def test_a_message_that_is_not_utf8_is_one_line_under_vs_too() -> None:
    """Bug: `printf 'hi \\xff there\\n' | expo-gguf chat M --vs M2 -i` ended in UnicodeEncodeError
    and both threads were lost: --vs skipped the REPL's input check. Both now take one path."""
    threads, out, a, b = vs("one", "hi \udcff there", "two")
    assert "error: cannot read your message: not UTF-8 text (byte 3)" in out
    assert [m["content"] for m in threads[1]] == ["one", "beta #1: one", "two", "beta #2: two"]
    assert [s[-1]["content"] for s in a.seen] == [s[-1]["content"] for s in b.seen] == ["one", "two"]


def test_not_utf8_under_vs_on_the_command_line() -> None:
    """The bug's own command, on two SmolLM2s: one error line, then the chat goes on."""
    model = str(smollm2())
    args = ["chat", model, "--vs", model, "-i", "--plain", "--temp", "0", "--max-tokens", "4", "--ctx", "256"]
    result = CliRunner().invoke(cli, [*args, "--threads", "1"], input=b"hi \xff there\nSay yes.\n/show\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "error: cannot read your message: not UTF-8 text (byte 3)" in result.output
    assert "Traceback" not in result.output and len(re.findall(r"messages\s+2\b", result.output)) == 2


def test_system_clear_and_save_guard_apply_to_both(tmp_path: Path) -> None:
    threads, out, _, _ = vs("/system Be brief.", "hi", '/system ""')
    assert "system message cleared for both models" in out
    assert [m["role"] for m in threads[0]] == [m["role"] for m in threads[1]] == ["user", "assistant"]
    plain = tmp_path / "plain.json"
    save_conversation(plain, [{"role": "user", "content": "x"}], {})
    threads, out, _, _ = vs("hi", f"/save {plain}", f"/load {plain}", "y", f"/save {plain}")
    out = " ".join(out.split())
    assert "holds another conversation (1 message)" in out
    assert "loaded 2 threads (1, 1 messages)" in out and "saved 2 threads (3, 3 messages)" in out
    assert [m["content"] for m in load_conversation(plain)] == ["x", "y", "alpha #2: y"]
