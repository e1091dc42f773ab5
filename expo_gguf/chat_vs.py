"""``chat A --vs B``: every message answered by A, then by B, each model keeping its own thread.

Each model sees the user's messages and its own earlier replies, never the other's: its answers
are then what it would say in a chat of its own, which is what the comparison is for. ``/save``
writes both threads (``conversation``); ``/load`` reads them back, or gives every model the same
history from a plain conversation file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import llama_cpp
from rich.console import Console
from rich.markup import escape

from .conversation import load_threads, save_conversation
from .errors import ExpoError
from .repl import Backend, Repl
from .runtime import ChatModel, Message, Sampling
from .units import distinct_names, human_bytes

KV_BYTES = 2  # llama.cpp's default KV cache type is f16


def labels(paths: Sequence[Path]) -> list[str]:
    """File stems, numbered when two are the same file name."""
    return distinct_names([p.stem for p in paths])


def kv_cache_bytes(session: ChatModel) -> int:
    """K and V for every layer and cell: 2 x layers x ctx x KV heads x head size x 2 bytes.

    ctx is the context llama.cpp allocated, which it may round up from --ctx.
    """
    model = session.llama.model
    head = llama_cpp.llama_model_n_embd(model) // max(llama_cpp.llama_model_n_head(model), 1)
    return (2 * llama_cpp.llama_model_n_layer(model) * session.llama.n_ctx()
            * llama_cpp.llama_model_n_head_kv(model) * head * KV_BYTES)


def banner(sessions: Sequence[ChatModel], names: Sequence[str]) -> list[str]:
    """Who answers, in which order, and the memory both models need together."""
    lines = [f"{i + 1}. {name} · {s.info.quant} · {human_bytes(s.info.size_bytes)} · ctx {s.info.n_ctx}"
             f" · {s.info.device}" for i, (s, name) in enumerate(zip(sessions, names))]
    files = sum(s.info.size_bytes for s in sessions)
    kv = [kv_cache_bytes(s) for s in sessions]
    lines.append(f"memory: about {human_bytes(files + sum(kv))} for both = the files "
                 f"({human_bytes(files)}, memory-mapped) + their f16 KV caches "
                 f"({' + '.join(human_bytes(k) for k in kv)}: 2 x layers x ctx x KV heads x head size x 2 bytes)")
    return lines


def one_shot(sessions: Sequence[ChatModel], names: Sequence[str], sampling: Sampling,
             messages: list[Message]) -> None:
    """Each model's reply on stdout under its name, first model first."""
    for i, (session, name) in enumerate(zip(sessions, names)):
        click.echo(f"{'' if i == 0 else chr(10)}## {name}")
        kept, _ = session.fit(messages, sampling)
        for chunk in session.stream(kept, sampling):
            click.echo(chunk, nl=False)
        click.echo()


class VsRepl(Repl):
    """The REPL with one ``Repl`` per model underneath; ``self.messages`` is the first's thread."""

    def __init__(self, sides: Sequence[tuple[str, Path, Backend]], settings: Any,
                 threads: list[list[Message]], console: Console, markdown: bool) -> None:
        super().__init__(sides[0][2], settings, threads[0], console, markdown)
        self.names = [name for name, _, _ in sides]
        self.files = [path for _, path, _ in sides]
        self.sides = [Repl(b, settings, t, console, markdown) for (_, _, b), t in zip(sides, threads)]
        self.commands.update(clear=self.clear, system=self.system, show=self.show, stats=self.stats,
                             regen=self.regen, save=self.save, load=self.load)

    def _each(self, act: Callable[[Repl], None]) -> None:
        """Run ``act`` on each model's side, under its name."""
        for name, side in zip(self.names, self.sides):
            self.console.print(f"[bold cyan]{escape(name)}:[/]", highlight=False)
            act(side)

    def handle(self, text: str) -> bool:
        if not text.strip() or (text.startswith("/") and not text.startswith("//")):
            return super().handle(text)
        for side in self.sides:
            side.messages.append({"role": "user", "content": text.removeprefix("/")})
        self._each(lambda side: side.respond())
        return True

    def drop_dangling(self) -> None:
        for side in self.sides:
            side.drop_dangling()

    def clear(self, _: str) -> None:
        for side in self.sides:
            side.messages[:] = [m for m in side.messages[:1] if m["role"] == "system"]
        self.note("both conversations cleared")

    def system(self, text: str) -> None:
        if not text:
            return super().system(text)
        for side in self.sides:
            if side.messages and side.messages[0]["role"] == "system":
                side.messages[0]["content"] = text
            else:
                side.messages.insert(0, {"role": "system", "content": text})
        self.note("system message set for both models")

    def regen(self, _: str) -> None:
        if not any(m["role"] == "user" for m in self.messages):
            raise ExpoError("nothing to regenerate")
        self._each(lambda side: side.command("/regen"))

    def show(self, _: str) -> None:
        settings = {k: str(v) for k, v in dataclasses.asdict(self.settings).items()}
        self._each(lambda side: self._table({**side.backend.show(), "messages": str(len(side.messages))}))
        self._table(settings)

    def stats(self, _: str) -> None:
        self._each(lambda side: side.stats(""))

    def save(self, arg: str) -> None:
        if not arg:
            raise ExpoError("usage: /save FILE")
        threads = [{"model": name, "file": str(path), "messages": side.messages}
                   for name, path, side in zip(self.names, self.files, self.sides)]
        save_conversation(Path(arg), self.messages, dataclasses.asdict(self.settings), threads)
        self.note(f"saved {len(self.sides)} threads ({', '.join(str(len(s.messages)) for s in self.sides)}"
                  f" messages) to {arg}")

    def load(self, arg: str) -> None:
        if not arg:
            raise ExpoError("usage: /load FILE")
        for side, thread in zip(self.sides, load_threads(Path(arg), len(self.sides))):
            side.messages[:] = thread
        self.note(f"loaded {len(self.sides)} threads ({', '.join(str(len(s.messages)) for s in self.sides)}"
                  f" messages) from {arg}")


def run_vs(sides: Sequence[tuple[str, Path, Backend]], settings: Any, *, console: Console,
           messages: list[Message], markdown: bool, read_line: Callable[[str], str] = input) -> list[list[Message]]:
    """Chat with every model in turn until /exit, Ctrl+D or Ctrl+C twice; returns each thread."""
    threads = [[dict(m) for m in messages] for _ in sides]
    repl = VsRepl(sides, settings, threads, console, markdown)
    repl.run(read_line)
    return [side.messages for side in repl.sides]
