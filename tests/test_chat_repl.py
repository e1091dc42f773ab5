"""The REPL on its own, driven by a scripted fake model: commands, multi-line input, Ctrl+C."""

from __future__ import annotations

import io
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from expo_gguf import Sampling
from expo_gguf.chat.commands import command_table
from expo_gguf.chat.conversation import load_conversation, save_conversation
from expo_gguf.chat.logs import markdown
from expo_gguf.chat.repl import Backend, read_message, run_repl, unfinished
from expo_gguf.errors import ExpoError

Message = dict[str, str]


class Fake:
    """A model that answers "echo: <last message>" word by word and records what it saw."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.seen: list[list[Message]] = []
        self.closed = 0
        self.interrupt_after = interrupt_after

    def reply(self, messages: list[Message]) -> Iterator[str]:
        self.seen.append([dict(m) for m in messages])
        try:
            for i, word in enumerate(["echo:", *messages[-1]["content"].split()]):
                if self.interrupt_after is not None and i == self.interrupt_after:
                    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl+C, caught by the REPL
                yield word + " "
        finally:
            self.closed += 1


def script(*lines: str | BaseException):
    """A ``read_line`` replaying ``lines``; exceptions are raised; EOF (Ctrl+D) at the end."""
    queue = list(lines)

    def read_line(prompt: str) -> str:
        if not queue:
            raise EOFError
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    return read_line


def chat(
    backend: Backend,
    *lines: str | BaseException,
    messages: list[Message] | None = None,
    settings: Sampling | None = None,
) -> tuple[list[Message], str]:
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False)
    history = run_repl(
        backend, settings or Sampling(), console=console, messages=messages, markdown=False, read_line=script(*lines)
    )
    return history, out.getvalue()


def test_message_reply_and_history() -> None:
    fake = Fake()
    history, out = chat(Backend(reply=fake.reply), "hello there", "second one")
    assert history == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "echo: hello there "},
        {"role": "user", "content": "second one"},
        {"role": "assistant", "content": "echo: second one "},
    ]
    assert "echo: hello there" in out and fake.closed == 2
    assert fake.seen[1][:2] == history[:2]  # the model sees the whole conversation


def test_multiline_block_and_backslash() -> None:
    assert read_message(script('"""', "line one", "", "line two", '"""')) == "line one\n\nline two"
    assert read_message(script('"""first', 'last"""')) == "first\nlast"
    assert read_message(script('"""one line"""')) == "one line"
    assert read_message(script("a \\", "b\\", "c")) == "a \nb\nc"
    history, _ = chat(Backend(reply=Fake().reply), '"""', "x", "y", '"""')
    assert history[0]["content"] == "x\ny"


def test_slash_commands(tmp_path: Path) -> None:
    fake = Fake()
    settings = Sampling()
    saved = tmp_path / "conv.json"
    history, out = chat(
        Backend(
            reply=fake.reply,
            show=lambda: {"model": "fake-model"},
            stats=lambda: {"generated": "3 tokens"},
            status=lambda: "STATUS-LINE",
        ),
        "/help",
        "/system be brief",
        "/system",
        "/set temp 0.25",
        "/set top_k 7",
        "/set temp -1",
        "/set temp hot",
        "/set nope 1",
        "/set",
        "hi",
        "/regen",
        "/show",
        "/stats",
        f"/save {saved}",
        "/clear",
        "/frobnicate",
        "//not a command",
        f"/load {saved}",
        "/exit",
        "never read",
        settings=settings,
    )
    assert "/regen" in out and "Multi-line" in out  # /help
    assert "be brief" in out  # /system without text shows it
    assert (settings.temp, settings.top_k) == (0.25, 7)  # /set changed the shared settings
    assert "temp must be >= 0" in out and "takes a float" in out and "usage: /set" in out
    assert "fake-model" in out and "3 tokens" in out and "STATUS-LINE" in out
    assert "unknown command /frobnicate" in out
    # /regen answered the same message again, replacing the first answer
    assert [m[-1]["content"] for m in fake.seen[:2]] == ["hi", "hi"]
    assert fake.seen[1][0] == {"role": "system", "content": "be brief"}
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant"]
    assert data["settings"]["temp"] == 0.25
    # after /clear (system kept) and "//..." sent as text, /load brought the saved three back
    assert fake.seen[2] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "/not a command"}]
    assert history == data["messages"]
    assert "never read" not in json.dumps(history)


def test_negative_seed_means_random_as_on_the_command_line() -> None:
    import llama_cpp

    assert Sampling(seed=-5).seed == Sampling(seed=-1).seed == llama_cpp.LLAMA_DEFAULT_SEED
    settings = Sampling(seed=3)
    _, out = chat(Backend(reply=Fake().reply), "/set seed -5", settings=settings)
    assert settings.seed == llama_cpp.LLAMA_DEFAULT_SEED and "seed = random" in out


def small_context(messages: list[Message]) -> tuple[list[Message], int]:
    """A fit for a context of 40 characters, refusing a longer prompt as ChatModel.fit does."""
    if sum(len(m["content"]) for m in messages) > 40:
        raise ExpoError("message too long: shorten it or raise --ctx")
    return messages, 0


def test_regen_that_no_longer_fits_keeps_the_answer() -> None:
    """A system message set after a reply can leave no room to ask again: /regen then says so and
    the conversation is as it was, rather than losing the question with its answer."""
    fake = Fake()
    history, out = chat(Backend(reply=fake.reply, fit=small_context), "hi", "/system " + "x" * 40, "/regen")
    assert "message too long" in out and len(fake.seen) == 1
    assert history == [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "echo: hi "},
    ]


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    history, out = chat(
        Backend(reply=Fake().reply),
        "hi",
        f"/load {bad}",
        f"/load {broken}",
        f"/load {tmp_path / 'missing.json'}",
        "/load",
        "/save",
    )
    assert out.count("error:") == 5
    assert "is not a conversation" in out and "cannot read" in out
    assert len(history) == 2  # unchanged


def hostile_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each file a /load must refuse, with the words its one-line error must contain."""
    cases: dict[str, tuple[object, str]] = {
        "malformed": (b'{"messages": [', "invalid JSON"),
        "not_utf8": (b'{"messages": ["\xff\xfe"]}', "not UTF-8"),
        "deep": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        "number": (b"42", "expected a list of messages"),
        "no_messages": (b'{"msgs": []}', "expected a list of messages"),
        "messages_dict": (b'{"messages": {"role": "user"}}', "expected a list of messages"),
        "role": ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
        "no_role": ([{"content": "x"}], "has no role"),
        "role_number": ([{"role": 7, "content": "x"}], "role 7;"),
        "content_list": ([{"role": "user", "content": ["x"]}], "list content"),
        "content_none": ([{"role": "user"}], "NoneType content"),
        "late_system": (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "only the first message",
        ),
        "string_message": (["hello"], "message 0 is a str"),
    }
    files: dict[str, tuple[Path, str]] = {}
    for name, (body, words) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
        files[name] = (path, words)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:  # sparse: 11 MB on paper, nothing on disk
        f.truncate(11 * 2**20)
    files["huge"] = (huge, "11.0 MB; /load reads conversations up to 10 MB")
    files["missing"] = (tmp_path / "missing.json", "no such file")
    files["directory"] = (tmp_path, "not a regular file")
    return files


def test_load_hostile_files_one_line_each_and_session_goes_on(tmp_path: Path) -> None:
    files = hostile_files(tmp_path)
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]))
    fake = Fake()
    lines = [f"/load {path}" for path, _ in files.values()]
    history, out = chat(Backend(reply=fake.reply), "hi", *lines, "still here", f"/load {good}", "next")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == len(files)  # exactly one line per bad file, no traceback
    for (_, words), line in zip(files.values(), errors):
        assert words in line, line
    assert "Traceback" not in out
    assert fake.seen[1][-1]["content"] == "still here" and len(fake.seen[1]) == 3  # went on
    assert [m["content"] for m in history] == ["q", "a", "next", "echo: next "]


def test_ctrl_c_at_prompt() -> None:
    fake = Fake()
    history, out = chat(
        Backend(reply=fake.reply),
        KeyboardInterrupt(),
        "still here",
        KeyboardInterrupt(),
        KeyboardInterrupt(),
        "never read",
    )
    assert "Ctrl+C again" in out
    assert [m["content"] for m in history] == ["still here", "echo: still here "]


def test_ctrl_c_during_reply_keeps_partial_reply() -> None:
    fake = Fake(interrupt_after=2)
    history, out = chat(Backend(reply=fake.reply), "one two three four five", "next")
    assert history[1]["role"] == "assistant"
    assert history[1]["content"].startswith("echo: one") and "five" not in history[1]["content"]
    assert "(interrupted)" in out and fake.closed == 2  # the generator was closed, not leaked
    assert history[2]["content"] == "next" and len(history) == 4  # the session went on
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_context_trim_told_once_and_refusal() -> None:
    fake = Fake()

    def fit(messages: list[Message]) -> tuple[list[Message], int]:
        if "huge" in messages[-1]["content"]:
            raise ExpoError("message too long: the prompt is 999 tokens and the context holds 64")
        head = [m for m in messages[:1] if m["role"] == "system"]
        rest = messages[len(head) :]
        return head + rest[-3:], max(len(rest) - 3, 0)

    history, out = chat(
        Backend(reply=fake.reply, fit=fit),
        "a",
        "b",
        "c",
        "huge message",
        "d",
        messages=[{"role": "system", "content": "sys"}],
    )
    assert out.count("context full") == 1
    assert "message too long" in out
    assert history[0] == {"role": "system", "content": "sys"}
    assert [m["content"] for m in history[1:]] == ["c", "echo: c ", "d", "echo: d "]
    assert all("huge" not in m["content"] for m in history)


def test_settings_validation_names_the_valid_range() -> None:
    cases = {
        "temp": (-1, "temp must be >= 0"),
        "top_p": (0, "top_p must be > 0 and <= 1"),
        "top_k": (-2, "top_k must be >= 0"),
        "min_p": (1.5, "min_p must be between 0 and 1"),
        "repeat_penalty": (0, "repeat_penalty must be > 0"),
        "max_tokens": (0, "max_tokens must be > 0, or -1 for no limit"),
    }
    for name, (value, words) in cases.items():
        with pytest.raises(ExpoError, match=re.escape(words)):
            Sampling(**{name: value})
    with pytest.raises(ExpoError, match=r"^temp must be >= 0.*; top_k must be >= 0"):
        Sampling(temp=-1, top_k=-1)


def test_seed_random_show_system_and_template() -> None:
    settings = Sampling(seed=7)
    backend = Backend(reply=Fake().reply, template=lambda: "{{ TEMPLATE-TEXT }}")
    _, out = chat(
        backend,
        "/set seed random",
        "/set",
        "/system be kind",
        "/show",
        "/show template",
        "/show nonsense",
        settings=settings,
    )
    assert "seed = random" in out and "seed=random" in out and "4294967295" not in out
    assert re.search(r"^seed\s+random\s*$", out, re.M) and re.search(r"^system\s+be kind\s*$", out, re.M)
    assert "{{ TEMPLATE-TEXT }}" in out and "usage: /show [template]" in out
    _, out = chat(Backend(reply=Fake().reply), "/show", "/show template")
    assert re.search(r"^system\s+\(none\)\s*$", out, re.M) and "(no chat template)" in out


def test_a_cut_reply_says_so_once() -> None:
    cut = Backend(reply=Fake().reply, cut=lambda: 12)
    _, out = chat(cut, "hello")
    assert out.count("(cut at 12 tokens)") == 1
    _, out = chat(Backend(reply=Fake().reply), "hello")
    assert "cut at" not in out
    _, out = chat(Backend(reply=Fake(interrupt_after=1).reply, cut=lambda: 12), "a b c")
    assert "(interrupted)" in out and "cut at" not in out  # stopped by the user, not cut


def test_a_typed_message_that_is_not_utf8_is_one_line_and_not_sent() -> None:
    fake = Fake()
    history, out = chat(Backend(reply=fake.reply), "caf\udce9 au lait", "after")
    assert "error: cannot read your message: not UTF-8 text (byte 3)" in out
    assert [m[-1]["content"] for m in fake.seen] == ["after"] and len(history) == 2


def test_a_paste_stays_one_message_verbatim() -> None:
    """A read that returns several lines (a bracketed paste, the line editor's buffer) is one message."""
    assert read_message(script("first line\nsecond \\\nthird")) == "first line\nsecond \\\nthird"
    assert read_message(script('"""\nx\n\ny\n"""')) == "x\n\ny"
    assert read_message(script('"""\nx', 'y"""')) == "x\ny"
    assert read_message(script("pasted\nlines \\", "and more")) == "pasted\nlines \nand more"
    for text, waits in [
        ('"""', True),
        ('"""a"""', False),
        ('"""\na', True),
        ('"""\na"""', False),
        ("a\\", True),
        ("a", False),
    ]:
        assert unfinished(text) is waits, text


def test_tab_completion_table() -> None:
    table = command_table(Sampling())
    assert table["set"] == ("temp", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed")
    assert table["save"] is table["save!"] is table["load"] is None and table["show"] == ("template",)
    assert set(table) >= {"help", "regen", "exit", "system"}


def test_plain_replies_wrap_between_words_on_a_terminal() -> None:
    words = "Extrapolation moves the weights further along the direction alignment took them, cheaply."
    backend = Backend(reply=lambda messages: (words[i : i + 3] for i in range(0, len(words), 3)))
    out = io.StringIO()
    console = Console(file=out, width=24, force_terminal=True, color_system=None, highlight=False)
    run_repl(backend, Sampling(), console=console, markdown=False, read_line=script("go"))
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert lines == [
        "Extrapolation moves the",
        "weights further along",
        "the direction alignment",
        "took them, cheaply.",
    ]


def test_system_quoted_empty_clears_it_and_quotes_are_taken_off() -> None:
    """Bug: `/system ""` set the two quote characters as the system message."""
    fake = Fake()
    history, out = chat(Backend(reply=fake.reply), '/system "Be terse."', "hi", '/system ""', "again", "/system")
    assert fake.seen[0][0] == {"role": "system", "content": "Be terse."}  # one quoted word, as a shell takes it
    assert "system message cleared" in out and fake.seen[1][0]["role"] == "user"
    assert [m["role"] for m in history] == ["user", "assistant"] * 2
    assert out.rstrip().endswith("(no system message)")  # /system alone still shows it
    for empty in ("''", '"  "'):
        history, out = chat(Backend(reply=Fake().reply), "/system x", f"/system {empty}")
        assert history == [] and "system message cleared" in out
    _, out = chat(Backend(reply=Fake().reply), '/system ""')
    assert "(no system message to clear)" in out
    history, _ = chat(Backend(reply=Fake().reply), '/system say "hi" to "them"')  # not one quoted word: as typed
    assert history == [{"role": "system", "content": 'say "hi" to "them"'}]


def conversation(n: int) -> list[Message]:
    return [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(n)]


def test_save_never_overwrites_another_conversation_without_save_bang(tmp_path: Path) -> None:
    """Bug: `/save conv.json` replaced a 7-message file with 3 messages without a word. /save writes
    over a file only when it holds an earlier state of this conversation; /save! over anything."""
    other = tmp_path / "conv.json"
    save_conversation(other, conversation(7), {})
    before = other.read_bytes()
    history, out = chat(Backend(reply=Fake().reply), "hi", f"/save {other}")
    said = f"error: {other} holds another conversation (7 messages); /save! {other} replaces it"
    assert said in " ".join(out.split())
    assert other.read_bytes() == before
    _, out = chat(Backend(reply=Fake().reply), "hi", f"/save! {other}")
    assert "saved 2 messages" in out and load_conversation(other) == history

    notes = tmp_path / "notes.txt"  # not a conversation at all
    notes.write_text("my notes\n")
    _, out = chat(Backend(reply=Fake().reply), "hi", f"/save {notes}")
    assert "exists and is not a conversation" in out and notes.read_text() == "my notes\n"


def test_save_replaces_an_earlier_save_of_the_same_conversation(tmp_path: Path) -> None:
    own, loaded = tmp_path / "own.json", tmp_path / "loaded.json"
    # its own earlier save, even when a new system message makes it no prefix of the conversation
    history, out = chat(Backend(reply=Fake().reply), "one", f"/save {own}", "/system new", "two", f"/save {own}")
    assert "error" not in out and out.count("saved") == 2 and load_conversation(own) == history
    # the file it was loaded from (here by /load), carried on
    save_conversation(loaded, conversation(2), {})
    history, out = chat(Backend(reply=Fake().reply), f"/load {loaded}", "three", f"/save {loaded}")
    assert "error" not in out and load_conversation(loaded) == history and len(history) == 4
    # ... and the same through run_repl's messages (chat --load FILE)
    history, out = chat(Backend(reply=Fake().reply), "four", f"/save {loaded}", messages=load_conversation(loaded))
    assert "error" not in out and len(load_conversation(loaded)) == 6
    # after /clear it is another conversation: the earlier save is kept
    fresh = tmp_path / "fresh.json"
    _, out = chat(Backend(reply=Fake().reply), "one", f"/save {fresh}", "/clear", "two", f"/save {fresh}")
    assert "holds another conversation (2 messages)" in " ".join(out.split())
    assert load_conversation(fresh)[0]["content"] == "one"
    # a file someone else changed since this conversation saved it is no longer its own
    stranger = tmp_path / "shared.json"

    def someone_else(_: list[Message]) -> Iterator[str]:
        save_conversation(stranger, conversation(5), {})
        yield "ok"

    _, out = chat(Backend(reply=someone_else), f"/save {stranger}", "hi", f"/save {stranger}")
    assert "holds another conversation (5 messages)" in " ".join(out.split())
    assert len(load_conversation(stranger)) == 5


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    """Bug: "(cut at 1 tokens)"."""
    _, out = chat(Backend(reply=Fake().reply, cut=lambda: 1), "hello")
    assert "(cut at 1 token)" in out
    _, out = chat(Backend(reply=Fake().reply), "/system x", f"/save {tmp_path / 'one.json'}")
    assert "saved 1 message to" in out
    conv = {"model": "m", "created": "now", "id": 1, "messages": [{"role": "assistant", "content": "a", "tokens": 1}]}
    assert "*1 token*" in markdown(conv)
    dropping = Backend(reply=Fake().reply, fit=lambda m: (m[1:], 1) if len(m) > 1 else (m, 0))
    _, out = chat(dropping, "one", "two")
    assert "context full: dropped the oldest message " in out
