"""The conversation store at size: 10,000 generated conversations (about 100,000 messages), then
``logs`` and ``logs -q WORD`` timed, as the query alone (in process) and as the whole command
(a new process, start-up included), side by side; and the database's size.

    python scripts/bench_logs.py [--conversations 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from expo_gguf.chat import logs
from expo_gguf.chat.store import Figures, ModelRecord, Store

WORDS = (
    "the of and to in is that for it as with was on be at by this had not are but from or have an they which one you "
    "were her all she there would their we him been has when who will more no if out so said what up its about into "
    "than them can only other new some could time these two may then do first any my now such like our over man me "
    "even most made after also did many before must through back years where much your way well down should because"
).split()
RARE = "zanzibar"  # in one message in a thousand


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def fill(path: Path, conversations: int, seed: int = 0) -> int:
    rng, store, n = random.Random(seed), Store(path), 0
    models = [
        ModelRecord(f"model-{i}-Q4_K_M.gguf", f"/models/model-{i}.gguf", 4_000_000_000, f"Model {i}") for i in range(5)
    ]
    for _ in range(conversations):
        cid = store.new_conversation(rng.choice(models), None, {"temp": 0.8}, "chat")
        for _ in range(5):
            text = _text(rng, rng.randint(5, 40)) + (f" {RARE}" if rng.random() < 0.001 else "")
            store.add_message(cid, "user", text)
            store.add_message(cid, "assistant", _text(rng, rng.randint(20, 200)), Figures(100, 0.3, 20.0))
            n += 2
    store.close()
    return n


def _median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "logs.db"
        t = time.perf_counter()
        n = fill(path, args.conversations)
        print(f"{args.conversations} conversations, {n} messages, filled in {time.perf_counter() - t:.1f} s")
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"database: {size / 1e6:.1f} MB ({size / n:.0f} bytes a message, index included)")
        store = Store(path)
        env = {**os.environ, "EXPO_GGUF_LOGS_DB": str(path)}
        exe = [sys.executable, "-m", "expo_gguf"]
        rows = [
            ("logs (newest 3)", lambda: logs.summaries(store, 3), ["logs"]),
            ("logs -n 100", lambda: logs.summaries(store, 100), ["logs", "-n", "100"]),
            (f"logs -q {RARE}", lambda: logs.summaries(store, 3, RARE), ["logs", "-q", RARE]),
            (
                "logs -q 'back years' (common)",
                lambda: logs.summaries(store, 3, "back years"),
                ["logs", "-q", "back years"],
            ),
            ("logs --model model-3", lambda: logs.summaries(store, 3, None, "model-3"), ["logs", "--model", "model-3"]),
        ]
        start = _median_ms(lambda: subprocess.run([*exe, "--version"], env=env, capture_output=True), args.repeat)
        print(
            f"\n{'':34} {'query':>9} {'command':>9}   (median of {args.repeat}; `expo-gguf --version`: {start:.0f} ms)"
        )
        for name, query, argv in rows:
            q = _median_ms(query, args.repeat)
            c = _median_ms(
                lambda argv=argv: subprocess.run([*exe, *argv], env=env, capture_output=True, check=True), args.repeat
            )
            print(f"{name:34} {q:7.1f}ms {c:7.0f}ms")


if __name__ == "__main__":
    main()
