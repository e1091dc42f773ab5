"""``expo-gguf modelfile``: option parsing and one line of output around ``modelfile``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from .cli import cli
from .gguf_info import describe
from .modelfile import known_template, write_modelfile

console = Console(highlight=False)


@cli.command()
@click.argument("gguf_file", metavar="FILE.gguf", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Output file or folder [default: FILE.Modelfile beside the GGUF].")
@click.option("--force", is_flag=True, help="Overwrite an existing Modelfile.")
def modelfile(gguf_file: Path, out: Path | None, force: bool) -> None:
    """Write an Ollama Modelfile for a GGUF, then `ollama create NAME -f FILE.Modelfile`.

    FROM points at the GGUF relative to the Modelfile. Where the GGUF's chat template is one
    expo-gguf knows (OpenChat/Starling, ChatML) the Modelfile states it in Ollama's syntax with
    its stop strings; otherwise Ollama picks a template from the GGUF's own.
    """
    info = describe(gguf_file)
    path = write_modelfile(gguf_file, force=force, out=out, info=info)
    known = known_template(info.chat_template)
    what = f"template: {known.name}" if known else "no TEMPLATE: the GGUF's template is not one expo-gguf knows"
    console.print(f"wrote {escape(str(path))} ({what})")
    console.print(f"  ollama create NAME -f {escape(str(path))}", soft_wrap=True)
