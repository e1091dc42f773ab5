"""The click shell: parse options into plain data, call one library function, print the result.

Owns: the ``expo-gguf`` group, its one error handler (every ``ExpoError`` is caught here, once,
and printed as one line with its exit code; Ctrl+C and SIGTERM as ``interrupted``, exit 130), the
options several commands share (``_options``) and what they print besides results (``_output``).
May import every other subpackage; nothing imports it. Each module below defines its commands,
and this module adds them to the group (they never import the group back), lazily: a command's
module is imported when that command runs, so ``logs`` or ``--version`` do not pay for numpy and
llama.cpp (half a second on a laptop).
"""

from __future__ import annotations

import importlib
import signal

import click
from rich.markup import escape

from ..errors import ExpoError
from ..runtime.preload import preload_llama
from ._output import err

# Every command, and the module of this package that defines it (in its COMMANDS).
COMMANDS = {
    "build": "build",
    "quantize": "quantize",
    "download": "download",
    "presets": "download",
    "imatrix": "imatrix",
    "chat": "chat",
    "serve": "chat",
    "logs": "logs",
    "info": "gguf",
    "modelfile": "gguf",
    "eval": "eval",
    "compare": "compare",
}
NO_LLAMA = {"logs", "presets"}  # commands that never load llama.cpp or numpy

_HELP_ONLY = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def _usage_error(e: click.UsageError, ctx: click.Context) -> None:
    """click's own usage errors as every other error: one ``error:`` line, then where help is."""
    err.print(f"[bold red]error:[/] {escape(e.format_message())}", soft_wrap=True)
    command = ctx.meta.get("expo.command")  # the parser's errors carry no context of their own
    where = e.ctx.command_path if e.ctx is not None else " ".join(filter(None, [ctx.command_path, command]))
    err.print(f"try: {escape(where)} --help", style="dim", soft_wrap=True)


class ExpoGroup(click.Group):
    """A group that turns ``ExpoError``, click's usage errors and Ctrl+C into one line and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in NO_LLAMA:
            preload_llama()
        module = importlib.import_module(f"{__name__}.{COMMANDS[cmd_name]}")
        return next(c for c in module.COMMANDS if c.name == cmd_name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:  # the group's own options (`expo-gguf --bogus`)
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if isinstance(e, _HELP_ONLY):  # bare `expo-gguf`: the help, as click shows it
                raise
            _usage_error(e, ctx)
            ctx.exit(e.exit_code)

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[override]
        try:
            name, command, rest = super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:  # click looks for suggestions in self.commands
            raise click.exceptions.NoSuchCommand(args[0], possibilities=list(COMMANDS), ctx=ctx) from e
        ctx.meta["expo.command"] = command.name if command else name
        return name, command, rest

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ExpoError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            ctx.exit(e.exit_code)
        except click.UsageError as e:  # a command's options and arguments, an unknown command
            _usage_error(e, ctx)
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
      expo-gguf logs -q WORD              search every kept conversation
      expo-gguf compare A.gguf B.gguf     same prompts through each: which to keep
    """


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM behaves as Ctrl+C: temporaries removed, one line, non-zero exit."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="expo-gguf")


if __name__ == "__main__":  # pragma: no cover
    main()
