"""Regenerate the ``--help`` blocks in README.md from the CLI itself, so the docs cannot drift.

A block is written between ``<!-- help:COMMAND -->`` and ``<!-- /help -->``. ``--check`` exits 1
when the README is out of date (the test suite runs it); without it the README is rewritten.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- help:(?P<cmd>[\w-]+) -->\n)(?P<body>.*?)(<!-- /help -->)", re.DOTALL)
WIDTH = 100


def help_text(command: str) -> str:
    from expo_gguf.cli import cli

    args = ["--help"] if command == "expo-gguf" else [command, "--help"]
    res = CliRunner().invoke(cli, args, prog_name="expo-gguf", terminal_width=WIDTH)
    assert res.exit_code == 0, res.output
    return res.output


def render(text: str) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}```\n{help_text(m.group('cmd'))}```\n{m.group(4)}", text)


def main(argv: list[str]) -> int:
    current = README.read_text(encoding="utf-8")
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print("README.md --help blocks are out of date: run python scripts/readme_help.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
