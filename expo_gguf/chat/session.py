"""A chat session over loaded models: the REPL's callbacks bound to a ``ChatModel``, one-shot
replies for pipes, and the interactive entry points the ``chat`` command calls.

This is where the chat layer meets the runtime; ``repl``, ``vs``, ``conversation`` and
``messages`` stay free of llama.cpp.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from .._units import human_bytes
from ..runtime.model import ChatModel
from . import vs
from .messages import Message, Sampling
from .repl import Backend, run_repl


def backend(session: ChatModel, sampling: Sampling) -> Backend:
    """Bind a loaded model to the REPL's callbacks; ``sampling`` is shared, so /set applies."""
    info = session.info

    def stats() -> dict[str, str]:
        s = session.last_stats
        if s is None:
            return {}
        return {
            "prompt tokens": f"{s.prompt_tokens} ({s.prompt_evaluated} evaluated, rest from cache)",
            "generated": f"{s.generated} tokens (stopped: {s.stop})",
            "time to first token": f"{s.ttft_s:.3f} s",
            "prompt speed": f"{s.prompt_tps:.1f} tok/s",
            "generation speed": f"{s.gen_tps:.1f} tok/s",
            "context": f"{s.ctx_used}/{s.n_ctx} tokens",
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
    )


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def answer_once(session: ChatModel, sampling: Sampling, messages: list[Message], err: Console, verbose: bool) -> None:
    """The reply alone on stdout, streamed, so it pipes cleanly into other tools."""
    kept, _ = session.fit(messages, sampling)
    for chunk in session.stream(kept, sampling):
        _echo(chunk)
    _echo("\n")
    if verbose and session.last_stats:
        err.print(session.last_stats.line(), style="dim", markup=False)


def answer_once_each(
    sessions: Sequence[ChatModel], names: Sequence[str], sampling: Sampling, messages: list[Message]
) -> None:
    """Each model's reply on stdout under its name, first model first."""
    for i, (session, name) in enumerate(zip(sessions, names)):
        _echo(f"{'' if i == 0 else chr(10)}## {name}\n")
        kept, _ = session.fit(messages, sampling)
        for chunk in session.stream(kept, sampling):
            _echo(chunk)
        _echo("\n")


def _line_editing() -> None:
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())


def chat_interactive(session: ChatModel, sampling: Sampling, messages: list[Message], plain: bool) -> None:
    console = Console(highlight=False)
    info = session.info
    _line_editing()
    console.print(
        f"[bold]{escape(info.name)}[/] · {info.quant} · {human_bytes(info.size_bytes)}"
        f" · ctx {info.n_ctx} · {info.device}"
    )
    for note in info.notes:
        console.print(f"note: {note}", style="dim", markup=False, soft_wrap=True)
    console.print("/help for commands, Ctrl+D or /exit to leave", style="dim")
    run_repl(
        backend(session, sampling),
        sampling,
        console=console,
        messages=messages,
        markdown=not plain and console.is_terminal,
    )


def chat_interactive_vs(
    sessions: Sequence[ChatModel], names: list[str], sampling: Sampling, messages: list[Message], plain: bool
) -> None:
    console = Console(highlight=False)
    _line_editing()
    for line in vs.banner(sessions, names):
        console.print(line, markup=False, soft_wrap=True)
    for note in dict.fromkeys(n for s in sessions for n in s.info.notes):
        console.print(f"note: {note}", style="dim", markup=False, soft_wrap=True)
    console.print(
        "each message is answered by both, each model keeping its own thread;"
        " /help for commands, Ctrl+D or /exit to leave",
        style="dim",
        soft_wrap=True,
    )
    sides = [(name, s.info.path, backend(s, sampling)) for name, s in zip(names, sessions)]
    vs.run_vs(sides, sampling, console=console, messages=messages, markdown=not plain and console.is_terminal)
