"""What the importance matrix costs: tokens/s of ``expo-gguf imatrix``, and what ``--imatrix auto``
adds to a 7B build.

    python scripts/bench_imatrix.py [--chunks 8] [--threads N] [-ngl auto]

Runs ``collect_imatrix`` (the code behind ``expo-gguf imatrix`` and ``--imatrix auto``) over the
shipped calibration text at ctx 512 on the tiny synthetic pair's F16 and on SmolLM2-135M-Instruct
expanded to F16, and the same chunks through the same context without the eval callback (the
plain forward pass), so the callback's overhead shows apart from the model's own cost. The 7B
figure is an estimate, stated as one: a CPU forward pass over a prompt is bound by its matrix
products, ~2 x parameters FLOP per token, so SmolLM2's measured FLOP/s is scaled to 7.24 B
parameters (Mistral 7B) for the whole calibration text.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp
import numpy as np
from _models import smollm2_path  # scripts/, beside this file

ROOT = Path(__file__).resolve().parent.parent
PARAMS_7B = 7.24e9


def plain_forward(path: Path, text: bytes, ctx: int, chunks: int, threads: int, ngl: str) -> float:
    """Seconds for the same chunks without the callback: the model's own cost."""
    from expo_gguf.measure import imatrix as m
    from expo_gguf.runtime.options import RunOptions

    vocab = m.read_vocab(path)
    toks = m.make_chunks(m.tokenize(path, text, vocab.bos), ctx, chunks, vocab.bos)
    opts = m.ImatrixOptions(RunOptions(n_ctx=ctx, threads=threads, n_gpu_layers=ngl), chunks)
    collector = m.Collector()
    collector.callback = llama_cpp.ggml_backend_sched_eval_callback(lambda t, ask, ud: not ask)
    with m._context(path, opts, collector) as c:
        batch = llama_cpp.llama_batch_init(ctx, 0, 1)
        for i in range(ctx):
            batch.seq_id[i][0] = 0
        np.ctypeslib.as_array(batch.n_seq_id, shape=(ctx,))[:] = 1
        np.ctypeslib.as_array(batch.pos, shape=(ctx,))[:] = np.arange(ctx)
        np.ctypeslib.as_array(batch.logits, shape=(ctx,))[:] = 1
        t0 = time.perf_counter()
        for chunk in toks:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(c), True)
            np.ctypeslib.as_array(batch.token, shape=(ctx,))[:] = chunk
            batch.n_tokens = ctx
            assert llama_cpp.llama_decode(c, batch) == 0
        seconds = time.perf_counter() - t0
        llama_cpp.llama_batch_free(batch)
    return seconds


def n_params(path: Path) -> int:
    from expo_gguf.gguf_file.header import read_gguf_header

    return sum(int(np.prod(t.shape)) for t in read_gguf_header(path).tensors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-ngl", "--n-gpu-layers", default="auto")
    args = ap.parse_args(argv)

    from expo_gguf._data import calibration_file
    from expo_gguf.measure.imatrix import ImatrixOptions, collect_imatrix
    from expo_gguf.runtime.options import RunOptions, usable_cores

    threads = args.threads or usable_cores()
    text = calibration_file().read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_synthetic_pair import make_pair

        sft, rlhf = make_pair(Path(tmp) / "pair", "tiny", seed=0)
        cli = [sys.executable, "-c", "from expo_gguf.cli import main; main()"]
        subprocess.run([*cli, "build", "--sft", sft, "--rlhf", rlhf, "-q", "f16", "--outdir", tmp, "--name", "tiny"],
                       check=True, capture_output=True)  # fmt: skip
        models = {"tiny pair": Path(tmp) / "tiny-F16.gguf"}
        smol = smollm2_path()
        if smol is not None:
            models["SmolLM2-135M"] = Path(tmp) / "smol-F16.gguf"
            subprocess.run([*cli, "quantize", smol, "-q", "f16", "-o", models["SmolLM2-135M"]], check=True)
        print(f"{threads} threads, -ngl {args.n_gpu_layers}, ctx 512, {args.chunks} chunks of the calibration text")
        print("| model | params | imatrix tok/s | s per 100k tokens | plain forward tok/s | callback overhead |")
        print("|---|--:|--:|--:|--:|--:|")
        flops = None
        for label, path in models.items():
            opts = ImatrixOptions(RunOptions(n_ctx=512, threads=threads, n_gpu_layers=args.n_gpu_layers), args.chunks)
            res = collect_imatrix(path, text, opts)
            plain = plain_forward(path, text, 512, args.chunks, threads, args.n_gpu_layers)
            n = n_params(path)
            tps = res.tokens_per_second
            print(
                f"| {label} | {n / 1e6:.1f} M | {tps:,.0f} | {1e5 / tps:,.1f} | {res.tokens / plain:,.0f} | "
                f"{res.seconds / plain - 1:+.0%} |"
            )
            if label.startswith("SmolLM2"):
                flops = 2 * n * tps
        if flops:
            cal_tokens = 76_000  # the shipped text in Mistral's tokenizer
            est = cal_tokens * 2 * PARAMS_7B / flops
            print(
                f"\nestimate for a 7B (7.24 B parameters) at SmolLM2's {flops / 1e9:.0f} GFLOP/s: "
                f"{2 * PARAMS_7B * 1e5 / flops / 60:.0f} min per 100k tokens; --imatrix auto over the whole "
                f"calibration text (~{cal_tokens // 1000}k tokens) adds ~{est / 60:.0f} min to a build "
                f"(--imatrix-chunks 32 : ~{est * 32 * 512 / cal_tokens / 60:.0f} min)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
