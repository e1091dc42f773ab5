"""``download``: both checkpoints of a pair into the Hugging Face cache, only the files a build reads;
``presets``: the published pairs it and ``build --preset`` know."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from ..source.presets import find_preset, load_presets
from ..source.remote_repo import BUILD_PATTERNS, download
from ._output import out as console
from ._output import print_table


@click.command(name="download")
@click.argument("repos", nargs=-1, metavar="[REPO]...")
@click.option(
    "--preset",
    default=None,
    metavar="NAME",
    help="A published ExPO model (see `expo-gguf presets`): its SFT and RLHF repos "
    "[default, without REPO: starling-lm-7b-beta].",
)
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit to download.")
def download_command(repos: tuple[str, ...], preset: str | None, revision: str) -> None:
    """Download checkpoints into the Hugging Face cache, so `build` finds them offline.

    Only what a build reads is fetched (safetensors shards, their index, config, tokenizer and
    chat template files), with huggingface_hub's progress bars, cache and token (HF_TOKEN or
    `hf auth login`). Every repo is checked first: one that ships only pickle weights is refused
    before anything is downloaded.
    """
    if preset and repos:
        raise click.UsageError("give either --preset or REPO ids, not both")
    if not repos:
        p = find_preset(preset) if preset else load_presets()[0]
        repos = (p.sft, p.rlhf)
    for repo, path in zip(repos, download(list(repos), revision)):
        console.print(f"{repo}  {path.name}  {path}", soft_wrap=True)
    console.print(f"files: {' '.join(BUILD_PATTERNS)}", soft_wrap=True, style="dim")


@click.command()
def presets() -> None:
    """The published ExPO models `build --preset NAME` reproduces, with the alpha of each model card."""
    rows = load_presets()
    if not console.is_terminal:  # one line per preset, tab-separated, for scripts
        t = Table()
        for col in ("name", "alpha", "sft", "rlhf", "file", "card", "default", "template"):
            t.add_column(col)
        for i, p in enumerate(rows):
            file = f"{p.output_name}-QUANT.gguf"
            template = "card" if p.chat_template else ""  # the model card's, where the checkpoint ships none
            t.add_row(p.name, f"{p.alpha:g}", p.sft, p.rlhf, file, p.source, "default" if i == 0 else "", template)
        print_table(t)
        return
    for i, p in enumerate(rows):  # a line per item: a long one runs on, no name is broken by a wrap
        console.print(f"[bold]{escape(p.name)}[/]{' (default)' if i == 0 else ''}  alpha {p.alpha:g}", soft_wrap=True)
        items = (("SFT ", p.sft), ("RLHF", p.rlhf), ("file", f"{p.output_name}-QUANT.gguf"), ("card", p.source))
        for label, value in items:
            console.print(f"  {label}  {escape(value)}", soft_wrap=True)
        if p.chat_template:
            console.print("  template  its model card's, if the RLHF checkpoint ships none", soft_wrap=True)


COMMANDS = (download_command, presets)
