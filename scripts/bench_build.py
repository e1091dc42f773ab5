"""Benchmark `expo-gguf build` against the I/O floor and the two-pass pipeline, on synthetic pairs.

    python scripts/bench_build.py --shape 1b                   # floor, ours, two-pass side by side
    python scripts/bench_build.py --shape 7b --pair /tmp/big7 --no-two-pass
    python scripts/bench_build.py --scale tiny,1b,3b,7b --png scale.png
    python scripts/bench_build.py --shape 1b --alphas 0.1,0.3,0.5   # one read vs one build per alpha

Each measurement starts from a cold page cache when run as root (sync; drop_caches), else says
the cache may be warm. Peak RSS is the sum over the process tree, sampled every 50 ms.
The two-pass pipeline is what a user would otherwise run: the ExPO authors' torch recipe
(load both models in bf16, theta = rlhf + alpha * (rlhf - sft) per parameter, save_pretrained),
then llama.cpp's convert_hf_to_gguf.py --outtype q8_0 from the llama-cpp-python sdist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _models import LLAMA_CPP_SRC_HINT, llama_cpp_src  # scripts/, beside this file

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ALPHA = 0.5


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            parent[int(d.name)] = int(fields[1])
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(rss.get(p, 0) for p in tree)


def measure(cmd: list[str], label: str) -> dict:
    """Run ``cmd`` from a cold cache; wall seconds and peak RSS of its process tree."""
    cold = drop_caches()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    t.join()
    ok = proc.returncode == 0
    if not ok:
        print(f"{label} failed ({proc.returncode}): {err.strip().splitlines()[-1:]}", file=sys.stderr)
    return {"step": label, "seconds": wall, "peak_rss": peak[0], "ok": ok, "cold_cache": cold}


def io_floor(files: list[Path], out_bytes: int, scratch: Path) -> dict:
    """Read every input once, sequentially, then write (and fsync) as many bytes as our output."""
    cold = drop_caches()
    buf = bytearray(16 << 20)
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    t_read = time.perf_counter() - t0
    zeros = bytes(16 << 20)
    with open(scratch, "wb") as fh:
        left = out_bytes
        while left > 0:
            left -= fh.write(zeros[: min(left, len(zeros))])
        fh.flush()
        os.fsync(fh.fileno())
    scratch.unlink()
    return {
        "step": "I/O floor",
        "seconds": time.perf_counter() - t0,
        "read_seconds": t_read,
        "peak_rss": 0,
        "ok": True,
        "cold_cache": cold,
    }


def torch_extrapolate(sft: str, rlhf: str, out: str) -> None:
    """The ExPO authors' recipe (their code/extrapolate.py), re-stated: bf16 models, one pass over params."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    sft_model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(rlhf, dtype=torch.bfloat16)
    sft_state = sft_model.state_dict()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.data = param.data + ALPHA * (param.data - sft_state[name])
    model.save_pretrained(out)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        if (Path(rlhf) / f).exists():
            shutil.copy(Path(rlhf) / f, Path(out) / f)


def convert_script(given: Path | None) -> Path:
    """llama.cpp's converter: from --llama-cpp-src, else the llama-cpp-python sdist (fetched once per machine)."""
    src = given or llama_cpp_src()
    if src is None:
        raise SystemExit(LLAMA_CPP_SRC_HINT)
    return src / "convert_hf_to_gguf.py"


def make_pair(shape: str, workdir: Path, given: Path | None) -> tuple[Path, Path]:
    base = given or workdir / f"pair-{shape}"
    sft, rlhf = base / "openchat-3.5-0106", base / "Starling-LM-7B-beta"
    if not (rlhf / "model.safetensors.index.json").exists():
        subprocess.run(
            [PY, str(ROOT / "scripts" / "make_synthetic_pair.py"), str(base), "--shape", shape],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return sft, rlhf


def bench_shape(shape: str, args: argparse.Namespace, two_pass: bool) -> list[dict]:
    workdir: Path = args.workdir
    sft, rlhf = make_pair(shape, workdir, args.pair)
    inputs = sorted(sft.glob("*.safetensors")) + sorted(rlhf.glob("*.safetensors"))
    in_bytes = sum(f.stat().st_size for f in inputs)
    out = workdir / f"out-{shape}"
    ours = measure(
        [
            str(Path(PY).parent / "expo-gguf"),
            "build",
            "--sft",
            str(sft),
            "--rlhf",
            str(rlhf),
            "-q",
            "q8_0",
            "--outdir",
            str(out),
            "--force",
        ],
        "expo-gguf build -q q8_0",
    )
    out_file = next(out.glob("*-Q8_0.gguf"))
    out_bytes = out_file.stat().st_size
    out_file.unlink()
    rows = [io_floor(inputs, out_bytes, workdir / "floor.bin"), ours]
    if two_pass:
        need = in_bytes * 1.15  # both models resident in bf16, plus the copy a save makes per tensor
        avail = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemAvailable"))) * 1024
        if need > avail:
            rows.append(
                {
                    "step": "two-pass",
                    "ok": False,
                    "seconds": None,
                    "peak_rss": None,
                    "note": f"not run: needs ~{need / 2**30:.1f} GiB RAM, {avail / 2**30:.1f} GiB available",
                }
            )
        else:
            merged = workdir / f"merged-{shape}"
            rows.append(
                measure(
                    [PY, __file__, "--_torch", str(sft), str(rlhf), str(merged)],
                    "two-pass 1: torch extrapolate + save_pretrained",
                )
            )
            conv = convert_script(args.llama_cpp_src)
            rows.append(
                measure(
                    [
                        PY,
                        str(conv),
                        str(merged),
                        "--outtype",
                        "q8_0",
                        "--outfile",
                        str(workdir / f"twopass-{shape}.gguf"),
                    ],
                    "two-pass 2: convert_hf_to_gguf --outtype q8_0",
                )
            )
            for p in [workdir / f"twopass-{shape}.gguf", *merged.glob("*")]:
                p.unlink(missing_ok=True)
    for r in rows:
        r.update(shape=shape, input_bytes=in_bytes, output_bytes=out_bytes)
    return rows


def bench_alphas(shape: str, alphas: str, args: argparse.Namespace) -> list[dict]:
    """Several alphas: one build that reads the inputs once vs one build per alpha, and the I/O
    floor of that work (inputs read once, every output written)."""
    sft, rlhf = make_pair(shape, args.workdir, args.pair)
    inputs = sorted(sft.glob("*.safetensors")) + sorted(rlhf.glob("*.safetensors"))
    in_bytes = sum(f.stat().st_size for f in inputs)
    out = args.workdir / f"out-{shape}"
    base = [
        str(Path(PY).parent / "expo-gguf"),
        "build",
        "--sft",
        str(sft),
        "--rlhf",
        str(rlhf),
        "-q",
        "q8_0",
        "--outdir",
        str(out),
        "--force",
    ]
    one = measure(base + ["--alpha", alphas], f"one build, --alpha {alphas}")
    files = sorted(out.glob("*-a*-Q8_0.gguf"))
    out_bytes = sum(f.stat().st_size for f in files)
    for f in files:
        f.unlink()
    separate = [measure(base + ["--alpha", a], f"separate build, --alpha {a}") for a in alphas.split(",")]
    total = {
        "step": f"{len(separate)} separate builds (sum)",
        "seconds": sum(r["seconds"] for r in separate),
        "peak_rss": max(r["peak_rss"] for r in separate),
        "ok": all(r["ok"] for r in separate),
        "cold_cache": all(r["cold_cache"] for r in separate),
    }
    rows = [io_floor(inputs, out_bytes, args.workdir / "floor.bin"), one, *separate, total]
    for r in rows:
        r.update(shape=shape, input_bytes=in_bytes, output_bytes=out_bytes)
    print(
        f"{shape}: one build / floor = {one['seconds'] / rows[0]['seconds']:.2f}x; "
        f"separate builds / one build = {total['seconds'] / one['seconds']:.2f}x"
    )
    return rows


def report(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="expo-gguf build benchmark")
    for c in ("shape", "step", "seconds", "GB/s in", "peak RSS", "note"):
        t.add_column(c)
    for r in rows:
        secs = r.get("seconds")
        t.add_row(
            r["shape"],
            r["step"],
            f"{secs:.1f}" if secs else "-",
            f"{r['input_bytes'] / secs / 1e9:.2f}" if secs else "-",
            f"{r['peak_rss'] / 2**20:.0f} MiB" if r.get("peak_rss") else "-",
            r.get("note", "" if r.get("cold_cache", True) else "warm cache"),
        )
    Console().print(t)
    for shape in dict.fromkeys(r["shape"] for r in rows):
        by = {r["step"].split(":")[0]: r for r in rows if r["shape"] == shape and r.get("seconds")}
        ours, floor = by.get("expo-gguf build -q q8_0"), by.get("I/O floor")
        two = [r["seconds"] for k, r in by.items() if k.startswith("two-pass")]
        if ours and floor:
            print(f"{shape}: ours / floor = {ours['seconds'] / floor['seconds']:.2f}x", end="")
            print(f"; two-pass / ours = {sum(two) / ours['seconds']:.2f}x" if len(two) == 2 else "")


def chart(rows: list[dict], png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: pip install matplotlib for --png", file=sys.stderr)
        return
    ours = [r for r in rows if r["step"].startswith("expo-gguf") and r["ok"]]
    gb = [r["input_bytes"] / 1e9 for r in ours]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(gb, [r["seconds"] for r in ours], "o-", label="expo-gguf build")
    floors = [r for r in rows if r["step"] == "I/O floor"]
    a.plot([r["input_bytes"] / 1e9 for r in floors], [r["seconds"] for r in floors], "s--", label="I/O floor")
    a.set(xlabel="input GB (both checkpoints)", ylabel="seconds", title="time")
    a.legend()
    b.plot(gb, [r["peak_rss"] / 2**20 for r in ours], "o-")
    b.set(xlabel="input GB (both checkpoints)", ylabel="MiB", title="peak RSS", ylim=(0, None))
    for x, r in zip(gb, ours):
        a.annotate(r["shape"], (x, r["seconds"]))
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_torch":
        torch_extrapolate(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1b", help="tiny, 1b, 3b or 7b (default 1b)")
    ap.add_argument("--scale", help="comma list of shapes: ours and the floor at each (no two-pass)")
    ap.add_argument("--pair", type=Path, help="reuse an existing pair (folder holding both checkpoints)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/expo-bench"))
    ap.add_argument("--llama-cpp-src", type=Path, help="a llama.cpp checkout (default: the llama-cpp-python sdist)")
    ap.add_argument("--no-two-pass", action="store_true")
    ap.add_argument("--alphas", help="comma list: one several-alpha build vs one build per alpha, and their floor")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    shapes = args.scale.split(",") if args.scale else [args.shape]
    rows: list[dict] = []
    for shape in shapes:
        if args.alphas:
            rows += bench_alphas(shape, args.alphas, args)
        else:
            rows += bench_shape(shape, args, two_pass=not (args.no_two_pass or args.scale))
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.png:
        chart(rows, args.png)


if __name__ == "__main__":
    main()
