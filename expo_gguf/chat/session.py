"""A chat session over loaded models: the REPL's callbacks bound to a ``ChatModel``, one-shot
replies for pipes, and the interactive entry points the ``chat`` command calls.

This is where the chat layer meets the runtime; ``repl``, ``vs``, ``conversation`` and
``messages`` stay free of llama.cpp.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .._units import human_bytes, plural
from ..errors import ExpoError
from ..gguf_file.info import describe
from ..runtime.loader import CPU_ONLY_NOTE
from ..runtime.model import ChatModel
from . import userdata, vs
from .commands import command_table
from .keeping import ChatLog, NoLog, kept_figures
from .messages import Message, Sampling
from .repl import Backend, run_repl
from .store import Figures, ModelRecord, Store


def chat_log(
    path: Path, sampling: Sampling, source: str, say: Callable[[str], None], resume: str | None = None
) -> ChatLog:
    """Where a conversation with the model at ``path`` is kept (the store opens with the first message)."""
    try:
        info = describe(path)
        name, expo = info.name, dict(info.expo) or None
    except ExpoError:  # the model loaded; its metadata is a nicety here
        name, expo = None, None
    record = ModelRecord(path.name, str(path.resolve()), path.stat().st_size, name, expo)
    return ChatLog(Store, record, lambda: dataclasses.asdict(sampling), source, say, resume=resume)


def figures(session: ChatModel) -> Figures | None:
    """The last reply's figures as the store keeps them."""
    return kept_figures(session.last_stats)[0]


def backend(session: ChatModel, sampling: Sampling, log: ChatLog | NoLog | None = None) -> Backend:
    """Bind a loaded model to the REPL's callbacks; ``sampling`` is shared, so /set applies;
    ``log`` keeps this model's thread."""
    info = session.info

    def stats() -> dict[str, str]:
        s = session.last_stats
        if s is None:
            return {}
        return {
            "prompt tokens": f"{s.prompt_tokens} ({s.prompt_evaluated} evaluated, rest from cache)",
            "generated": f"{plural(s.generated, 'token')} (stopped: {s.stop})",
            "time to first token": f"{s.ttft_s:.3f} s",
            "prompt speed": f"{s.prompt_tps:.1f} tok/s",
            "generation speed": f"{s.gen_tps:.1f} tok/s",
            "context": f"{s.ctx_used}/{plural(s.n_ctx, 'token')}",
        }

    def show() -> dict[str, str]:
        used = session.last_stats.ctx_used if session.last_stats else 0
        return {
            "model": f"{info.name} ({info.path})",
            "quant": info.quant,
            "size": human_bytes(info.size_bytes),
            "device": info.device,
            "context": f"{used}/{info.n_ctx} used (trained {info.n_ctx_train})",
            "stop ids": ", ".join(map(str, sorted(session.stop_ids))),
        }

    return Backend(
        reply=lambda messages: session.stream(messages, sampling),
        fit=lambda messages: session.fit(messages, sampling),
        status=lambda: session.last_stats.line() if session.last_stats else None,
        stats=stats,
        show=show,
        cut=lambda: _cut(session),
        template=lambda: session.prompt_format.template,
        figures=lambda: figures(session),
        log=log or NoLog(),
    )


def _cut(session: ChatModel) -> int | None:
    """The last reply's length when --max-tokens or a full context cut it."""
    s = session.last_stats
    return s.generated if s is not None and s.stop in ("max_tokens", "context") else None


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _say_cut(session: ChatModel, err: Console, capped: bool) -> None:
    """A cut reply says so on stderr, so stdout stays the reply alone."""
    cut = _cut(session)
    if cut is None:
        return
    s = session.last_stats
    if s is not None and s.stop == "context":
        why = ": the context is full (--ctx)"
    elif capped:
        why = ", the one-shot default; --max-tokens N for longer, -1 for no limit"
    else:
        why = ""
    err.print(f"(cut at {plural(cut, 'token')}{why})", style="dim", markup=False, highlight=False, soft_wrap=True)


def _stream_kept(
    session: ChatModel, sampling: Sampling, messages: list[Message], log: ChatLog | NoLog, grammar: str | None = None
) -> None:
    """One reply streamed to stdout, the question and the reply kept as each is complete (a reply
    Ctrl+C stopped is kept too, marked interrupted)."""
    kept, _ = session.fit(messages, sampling)
    log.user(messages[-1]["content"])
    chunks: list[str] = []
    try:
        for chunk in session.stream(kept, sampling, grammar):
            chunks.append(chunk)
            _echo(chunk)
    except KeyboardInterrupt:
        log.reply("".join(chunks), figures(session), "interrupted")
        raise
    _echo("\n")
    log.reply("".join(chunks), *kept_figures(session.last_stats))


def answer_once(
    session: ChatModel,
    sampling: Sampling,
    messages: list[Message],
    err: Console,
    verbose: bool,
    capped: bool = False,
    log: ChatLog | NoLog | None = None,
    grammar: str | None = None,
) -> None:
    """The reply alone on stdout, streamed, so it pipes cleanly into other tools; ``capped``: the
    reply length is the one-shot default, not the user's; ``grammar`` (GBNF, ``--json-schema``)
    constrains it."""
    _stream_kept(session, sampling, messages, log or NoLog(), grammar)
    _say_cut(session, err, capped)
    if verbose and session.last_stats:
        err.print(session.last_stats.line(), style="dim", markup=False)


def answer_once_each(
    sessions: Sequence[ChatModel],
    names: Sequence[str],
    sampling: Sampling,
    threads: Sequence[list[Message]],
    err: Console,
    capped: bool = False,
    logs: Sequence[ChatLog | NoLog] | None = None,
) -> None:
    """Each model's reply on stdout under its name, first model first (each to its own thread)."""
    for i, (session, name, messages) in enumerate(zip(sessions, names, threads)):
        _echo(f"{'' if i == 0 else chr(10)}## {name}\n")
        _stream_kept(session, sampling, messages, logs[i] if logs else NoLog())
        _say_cut(session, err, capped)


def _read_piped_line(prompt: str) -> str:
    """``input()`` for a pipe (``-i``), without its strict decoding: bytes that are not UTF-8 reach
    the REPL, which names them in one line instead of the chat ending in a traceback."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.buffer.readline()
    if not line:
        raise EOFError
    return line.decode("utf-8", "surrogateescape").removesuffix("\n").removesuffix("\r")


def _input_line(console: Console, sampling: Sampling) -> Callable[[str], str]:
    """The line editor on a terminal (history, Ctrl+R, Tab, paste); a pipe is read as it is."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return _read_piped_line
    from .line_editor import LineEditor, open_history

    history, problem = open_history(userdata.history_path())
    if problem:
        console.print(f"note: {problem}", style="dim", markup=False, soft_wrap=True)
    return LineEditor(command_table(sampling), history).read_line


def _print_notes(console: Console, notes: Sequence[str]) -> None:
    for note in notes:
        if note == CPU_ONLY_NOTE and not userdata.first_time("cpu-only"):
            continue  # said on the first start; -ngl on such a build still warns every time
        console.print(f"note: {note}", style="dim", markup=False, soft_wrap=True)


def chat_interactive(
    session: ChatModel, sampling: Sampling, messages: list[Message], plain: bool, log: ChatLog | NoLog | None = None
) -> None:
    console = Console(highlight=False)
    info = session.info
    console.print(
        f"[bold]{escape(info.name)}[/] · {info.quant} · {human_bytes(info.size_bytes)}"
        f" · ctx {info.n_ctx} · {info.device}"
    )
    _print_notes(console, info.notes)
    if messages:
        console.print(f"{plural(len(messages), 'message')} loaded", style="dim")
    console.print("/help for commands, Ctrl+D or /exit to leave", style="dim")
    run_repl(
        backend(session, sampling, log),
        sampling,
        console=console,
        messages=messages,
        markdown=not plain and console.is_terminal,
        read_line=_input_line(console, sampling),
    )


def chat_interactive_vs(
    sessions: Sequence[ChatModel],
    names: list[str],
    sampling: Sampling,
    threads: list[list[Message]],
    plain: bool,
    logs: Sequence[ChatLog | NoLog] | None = None,
) -> None:
    console = Console(highlight=False)
    for line in vs.banner(sessions, names):
        console.print(line, markup=False, soft_wrap=True)
    _print_notes(console, list(dict.fromkeys(n for s in sessions for n in s.info.notes)))
    console.print(
        "each message is answered by both, each model keeping its own thread;"
        " /help for commands, Ctrl+D or /exit to leave",
        style="dim",
        soft_wrap=True,
    )
    logs = logs or [NoLog() for _ in sessions]
    sides = [(name, s.info.path, backend(s, sampling, log)) for name, s, log in zip(names, sessions, logs)]
    vs.run_vs(
        sides,
        sampling,
        console=console,
        threads=threads,
        markdown=not plain and console.is_terminal,
        read_line=_input_line(console, sampling),
    )
