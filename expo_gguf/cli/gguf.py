"""``info`` and ``modelfile``: what a GGUF holds, and an Ollama Modelfile for it."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._fs import default_place
from .._units import human_bytes
from ..gguf_file.info import GGUFInfo, describe
from ..gguf_file.modelfile import known_template, modelfile_path, write_modelfile
from ._output import note, print_table
from ._output import out as console

TEMPLATE_LINES = 16  # a Llama 3.1 template is ~110 lines: the head says which one it is


def render_info(info: GGUFInfo, console: Console, full_template: bool = False) -> None:
    """Key and value side by side on a terminal (a long value folded under itself); piped,
    ``key<TAB>value`` lines without padding (``print_table``)."""
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    t.add_row("file", f"{info.path}  ({human_bytes(info.nbytes)})")
    t.add_row("architecture", info.architecture)
    t.add_row("name", info.name or "-")
    t.add_row("file type", info.file_type or "-")
    t.add_row("base models", ", ".join(info.base_models) or "-")
    if info.expo:
        t.add_row("ExPO", "  ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.expo.items()))
    if info.imatrix:
        t.add_row("importance matrix", "  ".join(f"{k}={v}" for k, v in info.imatrix.items()))
    t.add_row("tensors", f"{info.n_tensors}: " + ", ".join(f"{n} {k}" for k, n in sorted(info.tensor_types.items())))
    t.add_row("context length", str(info.context_length or "-"))
    t.add_row("special tokens", "  ".join(f"{k}={i} {s!r}" for k, (i, s) in info.special_tokens.items()) or "-")
    if info.context_length:
        n = min(4096, info.context_length)
        t.add_row("est. RAM", f"{human_bytes(info.ram_estimate(n))} at ctx {n}")
    if console.is_terminal:
        console.print(t)
    else:
        print_table(t, console)
    console.print("[bold]chat template[/]")
    lines = (info.chat_template or "(none)").splitlines()
    shown = lines if full_template or len(lines) <= TEMPLATE_LINES + 4 else lines[:TEMPLATE_LINES]
    console.print("\n".join(shown), markup=False, soft_wrap=True)
    if len(shown) < len(lines):
        console.print(f"[dim]... {len(lines) - len(shown)} more lines (--template prints it all)[/]")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--template", "full_template", is_flag=True, help="Print the whole chat template, however long.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print it all as one JSON object instead (the whole template included)."
)
def info(path: Path, full_template: bool, as_json: bool) -> None:
    """What a GGUF holds: architecture, provenance, types, context, special tokens, template, RAM."""
    described = describe(path)
    if as_json:
        click.echo(json.dumps(described.to_json(), indent=2, ensure_ascii=False, default=str))
    else:
        render_info(described, console, full_template)


@click.command()
@click.argument("gguf_file", metavar="FILE.gguf", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(),  # a str: Path() would drop the slash of DIR/
    default=None,
    help="Output file, or a folder (DIR/, made if missing) for the default name [default: FILE.Modelfile "
    "beside the GGUF, or in the current directory when the GGUF's folder is not writable or belongs to an "
    "installed package].",
)
@click.option("--force", is_flag=True, help="Overwrite an existing Modelfile.")
def modelfile(gguf_file: Path, out: str | None, force: bool) -> None:
    """Write an Ollama Modelfile for a GGUF, then `ollama create NAME -f FILE.Modelfile`.

    FROM points at the GGUF relative to the Modelfile. Where the GGUF's chat template is one
    expo-gguf knows (OpenChat/Starling, ChatML) the Modelfile states it in Ollama's syntax with
    its stop strings; otherwise Ollama picks a template from the GGUF's own.
    """
    info = describe(gguf_file)
    place = None
    if out is None:
        out, place = default_place(gguf_file, modelfile_path(gguf_file).name)
    if place:
        note(place)
    path = write_modelfile(gguf_file, force=force, out=out, info=info)
    known = known_template(info.chat_template)
    what = f"template: {known.name}" if known else "no TEMPLATE: the GGUF's template is not one expo-gguf knows"
    console.print(f"wrote {escape(str(path))} ({what})", soft_wrap=True)
    console.print(f"  ollama create NAME -f {escape(str(path))}", soft_wrap=True)


COMMANDS = (info, modelfile)
