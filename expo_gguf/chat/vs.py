"""``chat A --vs B``: every message answered by A, then by B, each model keeping its own thread.

Each model sees the user's messages and its own earlier replies, never the other's: its answers
are then what it would say in a chat of its own, which is what the comparison is for. ``/save``
writes both threads (``conversation``); ``/load`` reads them back, or gives every model the same
history from a plain conversation file.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from .._units import human_bytes
from ..errors import ExpoError
from ..gguf_file.info import describe
from ..runtime.options import cap_context
from .conversation import load_threads, save_conversation
from .keeping import ChatLog, NoLog
from .messages import Message, Sampling
from .repl import Backend, Repl, sigint_flag

if TYPE_CHECKING:  # the REPL side never imports llama.cpp
    from ..runtime.model import ChatModel

KV_PAD = 256  # llama.cpp allocates KV cells in multiples of 256
UBATCH = 512  # llama-cpp-python's n_ubatch, capped at the context as loader caps n_batch
LOGIT_BYTES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """What both models need together, from their headers alone, so it is said before loading."""

    files: tuple[int, ...]  # memory-mapped weights: RAM, or GPU memory for offloaded layers
    kv: tuple[int, ...]  # f16 K and V caches for the cells llama.cpp allocates
    compute: tuple[int, ...]  # the compute buffer (one ubatch's logits over the vocabulary) + output buffer

    @property
    def total(self) -> int:
        return sum(self.files) + sum(self.kv) + sum(self.compute)

    def line(self) -> str:
        def each(parts: tuple[int, ...]) -> str:
            return " + ".join(human_bytes(x) for x in parts)

        return (
            f"memory: about {human_bytes(self.total)} for both (RAM, or GPU memory for offloaded layers)"
            f" = the files ({each(self.files)}, memory-mapped) + f16 KV caches ({each(self.kv)})"
            f" + compute buffers ({each(self.compute)})"
        )


def estimate_memory(paths: Sequence[Path], n_ctx: int) -> MemoryEstimate:
    files, kv, compute = [], [], []
    for path in paths:
        info = describe(path)
        ctx = cap_context(n_ctx, info.context_length, [])
        files.append(info.nbytes)
        kv.append(info.kv_cache_bytes(-(-ctx // KV_PAD) * KV_PAD))
        compute.append((min(UBATCH, ctx) + 1) * info.n_vocab * LOGIT_BYTES)
    return MemoryEstimate(tuple(files), tuple(kv), tuple(compute))


def banner(sessions: Sequence[ChatModel], names: Sequence[str]) -> list[str]:
    """Who answers, in which order, on what."""
    return [
        f"{i + 1}. {name} · {s.info.quant} · {human_bytes(s.info.size_bytes)} · ctx {s.info.n_ctx} · {s.info.device}"
        for i, (s, name) in enumerate(zip(sessions, names))
    ]


class VsRepl(Repl):
    """The REPL with one ``Repl`` per model underneath; ``self.messages`` is the first's thread."""

    def __init__(
        self,
        sides: Sequence[tuple[str, Path, Backend]],
        settings: Sampling,
        threads: list[list[Message]],
        console: Console,
        markdown: bool,
    ) -> None:
        super().__init__(sides[0][2], settings, threads[0], console, markdown)
        self.names = [name for name, _, _ in sides]
        self.files = [path for _, path, _ in sides]
        self.sides = [Repl(b, settings, t, console, markdown) for (_, _, b), t in zip(sides, threads)]

    def _each(self, act: Callable[[Repl], None]) -> None:
        """Run ``act`` on each model's side, under its name."""
        for name, side in zip(self.names, self.sides):
            self.console.print(f"[bold cyan]{escape(name)}:[/]", highlight=False)
            act(side)

    def _turn(self, answer: Callable[[Repl, threading.Event], None]) -> None:
        """Every model answers in turn under one Ctrl+C flag: a Ctrl+C stops the reply under way
        (keeping its start) and skips the models after it, whose threads get the empty reply a
        Ctrl+C before the first token leaves, so every thread holds the same questions."""
        with sigint_flag() as stop:
            for name, side in zip(self.names, self.sides):
                self.console.print(f"[bold cyan]{escape(name)}:[/]", highlight=False)
                if not stop.is_set():
                    answer(side, stop)
                    continue
                if side.messages and side.messages[-1]["role"] == "user":
                    side.messages.append({"role": "assistant", "content": ""})
                    side.backend.log.reply("", None, "interrupted")
                self.note("(skipped)")

    def threads(self) -> list[list[Message]]:
        return [side.messages for side in self.sides]

    def logs(self) -> list[ChatLog | NoLog]:
        return [side.backend.log for side in self.sides]

    def ask(self, text: str) -> None:
        question = {"role": "user", "content": text}
        for name, side in zip(self.names, self.sides):  # one that cannot take it: none is asked
            try:
                side.backend.fit([*side.messages, question])
            except ExpoError as e:
                self.error(f"{name}: {e}")
                return
        for side in self.sides:
            side.messages.append(dict(question))
            side.backend.log.user(text)
        self._turn(lambda side, stop: side.respond(stop))

    def drop_dangling(self) -> None:
        for side in self.sides:
            side.drop_dangling()

    def regen(self, _: str) -> None:
        before = [list(side.messages) for side in self.sides]
        replaced = [side.backend.log.last_reply for side in self.sides]
        for side in self.sides:
            side.drop_reply()
        self._turn(lambda side, stop: side.respond(stop))
        for side, kept, old in zip(self.sides, before, replaced):
            side.restore_if_unanswered(kept)
            side.kept_as_alternative(old)

    def show(self, arg: str) -> None:
        if arg == "template":
            return self._each(lambda side: side.show_template())
        if arg:
            raise ExpoError("usage: /show [template]")
        self._each(
            lambda side: self._table(
                {**side.backend.show(), "system": side.system_shown(), "messages": str(len(side.messages))}
            )
        )
        self._table(self.settings_shown())

    def stats(self, _: str) -> None:
        self._each(lambda side: side.stats(""))

    def _counts(self) -> str:
        return f"{len(self.sides)} threads ({', '.join(str(len(s.messages)) for s in self.sides)} messages)"

    def write(self, path: Path) -> str:
        threads = [
            {"model": name, "file": str(file), "messages": side.messages}
            for name, file, side in zip(self.names, self.files, self.sides)
        ]
        save_conversation(path, self.messages, dataclasses.asdict(self.settings), threads)
        return self._counts()

    def read(self, path: Path) -> str:
        for side, thread in zip(self.sides, load_threads(path, len(self.sides))):
            side.messages[:] = thread
        return self._counts()


def run_vs(
    sides: Sequence[tuple[str, Path, Backend]],
    settings: Sampling,
    *,
    console: Console,
    threads: list[list[Message]],
    markdown: bool,
    read_line: Callable[[str], str] = input,
) -> list[list[Message]]:
    """Chat with every model in turn until /exit, Ctrl+D or Ctrl+C twice; returns each thread.

    ``threads`` holds each model's conversation so far (the same one, or what ``/save`` wrote)."""
    threads = [[dict(m) for m in thread] for thread in threads]
    repl = VsRepl(sides, settings, threads, console, markdown)
    repl.run(read_line)
    return [side.messages for side in repl.sides]
