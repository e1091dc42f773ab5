"""``expo-gguf`` and ``python -m expo_gguf``: the CLI, with Ctrl+C one line and exit 130 from the start.

Importing the CLI takes a good part of a second (numpy, llama.cpp's libraries, rich, click); a
Ctrl+C then, before the command's own handler exists, would otherwise end in a traceback.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130


def main() -> None:
    try:
        from .cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # while importing, or outside a command (the group handles its own)
        sys.stderr.write("interrupted\n")
        raise SystemExit(INTERRUPTED) from None


if __name__ == "__main__":
    main()
