"""``logs``: the conversations the chat and the server keep (``chat.store``), listed, searched,
shown, exported and deleted."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from .._fs import write_text_atomic
from .._units import plural
from ..chat import logs as read
from ..chat.store import Store, StoreError, default_path, kept_path
from ..errors import ExpoError
from ._output import note, print_table
from ._output import out as console


def _store() -> Store | None:
    """The store, or None when nothing was ever kept (reading never creates it)."""
    path = default_path()
    if not path.exists():
        return None
    try:
        return Store(path)
    except StoreError as e:
        try:  # a read-only disk still reads
            return Store(path, read_only=True)
        except StoreError:
            raise e from None


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _dump(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group(invoke_without_command=True)
@click.option("-n", "count", type=click.IntRange(min=0), default=3, show_default=True, help="How many; 0 for all.")
@click.option("-q", "--query", metavar="TEXT", help="Only conversations with a message holding every word of TEXT.")
@click.option("--model", metavar="TEXT", help="Only conversations with a model whose file or name holds TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Print the conversations whole, as a JSON list.")
@click.pass_context
def logs(ctx: click.Context, count: int, query: str | None, model: str | None, as_json: bool) -> None:
    """The conversations kept by chat and serve, newest first: id, when, model, turns, first line.

    Every conversation is kept in a SQLite file (`expo-gguf logs path`) unless chat or serve
    ran with --no-log or EXPO_GGUF_NO_LOG=1. Continue one with `expo-gguf chat --resume ID`
    (any unique start of its id) or the newest with `chat --continue`.

    \b
      expo-gguf logs -n 10                 the ten newest
      expo-gguf logs -q "rainbow colours"  every conversation with both words
      expo-gguf logs show 01JD             one conversation, as a transcript
      expo-gguf logs export -o all.md      every conversation as markdown
    """
    if ctx.invoked_subcommand is not None:
        return
    store = _store()
    if store is not None and query and not store.fts:
        note("searching without FTS5 (this Python's sqlite3 lacks it): every word as a substring, slower")
    found = read.summaries(store, count + 1 if count else -1, query, model) if store else []
    more = bool(count) and len(found) > count  # one more asked for: whether to say there are others
    found = found[:count] if count else found
    if as_json:
        _dump([read.conversation(store, s.id) for s in found] if store else [])
        return
    if not found:
        if console.is_terminal:
            console.print("no conversations" + (" match" if query or model else " kept yet"), style="dim")
        return
    if console.is_terminal:  # two lines each, within 80 columns: what names it, then what it was
        for s in found:
            console.print(f"[bold]{s.id}[/]  {_when(s.updated)}  {plural(s.turns, 'turn')}", highlight=False)
            line = _clip(f"{s.model}: {s.first_line}", max(20, console.width - 2))
            model, _, first = line.partition(": ")
            console.print(f"  [cyan]{escape(model)}[/]" + (f"[dim]: {escape(first)}[/]" if first else ""))
        if more:
            console.print(f"more: expo-gguf logs -n {count * 10}, or -n 0 for all", style="dim")
        return
    t = Table(box=None, pad_edge=False, show_header=False)
    for _ in range(5):
        t.add_column()
    for s in found:  # piped: id, when, model, turns, first line; tab-separated
        t.add_row(s.id, _when(s.updated), s.model, str(s.turns), s.first_line)
    print_table(t, console)


@logs.command()
@click.argument("conversation_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print it as one JSON object.")
def show(conversation_id: str, as_json: bool) -> None:
    """One conversation: a transcript on a terminal, markdown when piped (`> chat.md`)."""
    store = _need_store()
    conv = read.conversation(store, read.resolve(store, conversation_id))
    if as_json:
        _dump(conv)
    elif console.is_terminal:
        console.print(Markdown(read.markdown(conv)))
    else:
        click.echo(read.markdown(conv), nl=False)


@logs.command()
@click.argument("conversation_ids", metavar="ID...", nargs=-1, required=True)
def rm(conversation_ids: tuple[str, ...]) -> None:
    """Delete conversations (any unique start of each id), every message with them."""
    store = _need_store()
    ids = [read.resolve(store, c) for c in conversation_ids]  # all found before any is deleted
    for cid in ids:
        store.delete(cid)
        click.echo(f"deleted {cid}")


@logs.command()
def path() -> None:
    """Where the conversations are kept (EXPO_GGUF_LOGS_DB moves it)."""
    click.echo(str(default_path()))


@logs.command()
@click.argument("conversation_ids", metavar="[ID]...", nargs=-1)
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True, help="Format."
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE, not stdout.")
@click.option("--force", is_flag=True, help="Overwrite FILE.")
def export(conversation_ids: tuple[str, ...], fmt: str, output: Path | None, force: bool) -> None:
    """Conversations as markdown transcripts or a JSON list: the IDs given, or every one, oldest first."""
    if output is not None and output.exists() and not force:
        raise ExpoError(f"{output} exists; use --force to replace it")
    store = _store()
    if conversation_ids:
        store = store or _need_store()
        ids = [read.resolve(store, c) for c in conversation_ids]
    else:
        ids = [s.id for s in reversed(read.summaries(store, -1))] if store else []
    convs = [read.conversation(store, cid) for cid in ids] if store else []
    if fmt == "json":
        text = json.dumps(convs, indent=2, ensure_ascii=False) + "\n"
    else:
        text = "\n---\n\n".join(read.markdown(c) for c in convs)
    if output is None:
        click.echo(text, nl=False)
        return
    write_text_atomic(output, text)
    console.print(f"{plural(len(convs), 'conversation')} -> {output}", soft_wrap=True)


def _need_store() -> Store:
    kept_path()  # nothing kept yet: one line
    return _store()  # type: ignore[return-value]


COMMANDS = (logs,)
