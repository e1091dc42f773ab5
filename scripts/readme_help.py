"""Regenerate the ``--help`` blocks in README.md and docs/*.md from the CLI itself, so the docs
cannot drift (docs/cli.md holds every command's).

A block is written between ``<!-- help:COMMAND -->`` and ``<!-- /help -->``. ``--check`` exits 1
when a file is out of date (the test suite runs it); without it the files are rewritten.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- help:(?P<cmd>[\w -]+) -->\n)(?P<body>.*?)(<!-- /help -->)", re.DOTALL)
WIDTH = 100


def help_text(command: str) -> str:
    from expo_gguf.cli import cli

    args = ["--help"] if command == "expo-gguf" else [*command.split(), "--help"]  # "logs show": a subcommand
    res = CliRunner().invoke(cli, args, prog_name="expo-gguf", terminal_width=WIDTH)
    assert res.exit_code == 0, res.output
    return res.output


def render(text: str) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}```\n{help_text(m.group('cmd'))}```\n{m.group(4)}", text)


def main(argv: list[str]) -> int:
    stale = []
    for path in FILES:
        current = path.read_text(encoding="utf-8")
        fresh = render(current)
        if fresh != current:
            stale.append(path.relative_to(ROOT))
            if "--check" not in argv:
                path.write_text(fresh, encoding="utf-8")
    if stale and "--check" in argv:
        print(
            f"--help blocks out of date in {', '.join(map(str, stale))}: run python scripts/readme_help.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
