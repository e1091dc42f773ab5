"""What a streamed markdown reply costs per chunk: the old live view (the whole reply re-rendered
on every refresh) against ``MarkdownStream`` (only the unfinished block), both redrawing on every
chunk (the worst case; the REPL redraws at most 12 times a second).

    python scripts/bench_markdown_stream.py --items 25,100,200
"""

from __future__ import annotations

import argparse
import io
import time

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown

from expo_gguf.chat import render


def reply(items: int) -> str:
    rows = "\n".join(f"{i}. Country number {i}, with a few words about it" for i in range(1, items + 1))
    return f"Here is the list:\n\n{rows}\n\nThe end."


def chunks(text: str) -> list[str]:
    return [text[i : i + 6] for i in range(0, len(text), 6)]  # about a token and a half


def console() -> Console:
    return Console(file=io.StringIO(), width=120, height=40, force_terminal=True)


def whole_reply_live(text: str) -> None:
    shown = ""
    with Live(Markdown(""), console=console(), auto_refresh=False, vertical_overflow="visible") as live:
        for chunk in chunks(text):
            shown += chunk
            live.update(Markdown(shown), refresh=True)


def block_stream(text: str) -> None:
    with render.MarkdownStream(console()) as stream:
        for chunk in chunks(text):
            stream.feed(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="25,100", help="list lengths, comma-separated")
    args = parser.parse_args()
    render.REFRESH_S = 0
    for items in map(int, args.items.split(",")):
        text = reply(items)
        n = len(chunks(text))
        times = {}
        for run in (whole_reply_live, block_stream):
            start = time.perf_counter()
            run(text)
            times[run.__name__] = (time.perf_counter() - start) / n * 1000
        print(
            f"{items} items ({n} chunks): whole-reply live {times['whole_reply_live']:.2f} ms/chunk,"
            f" block stream {times['block_stream']:.2f} ms/chunk"
            f" ({times['whole_reply_live'] / times['block_stream']:.1f}x)"
        )


if __name__ == "__main__":
    main()
