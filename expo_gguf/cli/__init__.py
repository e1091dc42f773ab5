"""The click shell: parse options into plain data, call one library function, print the result.

Owns: the ``expo-gguf`` group, its one error handler (every ``ExpoError`` is caught here, once,
and printed as one line with its exit code; Ctrl+C and SIGTERM as ``interrupted``, exit 130), the
options several commands share (``_options``) and what they print besides results (``_output``).
May import every other subpackage; nothing imports it. Each module below defines its commands,
and this module adds them to the group (they never import the group back).
"""

from __future__ import annotations

import signal

import click
from rich.markup import escape

from ..errors import ExpoError
from . import build, chat, compare, download, eval, gguf, imatrix, quantize
from ._output import err


class ExpoGroup(click.Group):
    """A group that turns ``ExpoError`` and Ctrl+C into one line and an exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ExpoError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]")
            ctx.exit(130)


@click.group(cls=ExpoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="expo-gguf")
def cli() -> None:
    """Build Starling-LM-7B-beta-ExPO (or any ExPO pair) as GGUF and chat with it offline.

    \b
      expo-gguf build --quant q8_0        extrapolate + write GGUF in one pass
      expo-gguf download                  both checkpoints into the HF cache (or: build --remote)
      expo-gguf info FILE.gguf            what a GGUF holds
      expo-gguf quantize FILE.gguf -q q4_k_m
      expo-gguf imatrix FILE.gguf --text T  importance matrix for better quants
      expo-gguf chat                      talk to the newest model in ./models
      expo-gguf compare A.gguf B.gguf     same prompts through each: which to keep
    """


for module in (build, quantize, download, imatrix, chat, gguf, eval, compare):
    for command in module.COMMANDS:
        cli.add_command(command)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM behaves as Ctrl+C: temporaries removed, one line, non-zero exit."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="expo-gguf")


if __name__ == "__main__":  # pragma: no cover
    main()
