"""Benchmark `expo-gguf build` against the I/O floor and the two-pass pipeline, on synthetic pairs.

    python scripts/bench_build.py --shape 1b                   # floors, ours (Q8_0, F16), two-pass
    python scripts/bench_build.py --shape 1b --baseline /work/main --repeat 2   # and an older checkout, bytes compared
    python scripts/bench_build.py --shape 7b --pair /tmp/big7 --no-two-pass
    python scripts/bench_build.py --scale tiny,1b,3b,7b --png scale.png
    python scripts/bench_build.py --shape 1b --alphas 0.1,0.3,0.5   # one read vs one build per alpha
    python scripts/bench_build.py --shape 1b --remote          # build --remote from a loopback hub vs local

Each step runs in a child process from a cold page cache when run as root (sync; drop_caches),
else says the cache may be warm; for each: wall seconds, user and sys CPU-seconds (the child's
rusage, its children included), GB/s of input, peak RSS (summed over the process tree, sampled
every 50 ms) and, after a build, how much of the inputs and the output the page cache still holds
(fincore). The floors: both inputs read once with `dd bs=16M` (buffered) and with
`dd bs=16M iflag=direct` (O_DIRECT), plus as many bytes as the output written and fdatasynced.
"warm" runs ours again after reading the inputs into the cache. --baseline runs another checkout's
build (`PYTHONPATH=CHECKOUT`) side by side and checks that both wrote the same sha256.
The two-pass pipeline is what a user would otherwise run: the ExPO authors' torch recipe
(load both models in bf16, theta = rlhf + alpha * (rlhf - sft) per parameter, save_pretrained),
then llama.cpp's convert_hf_to_gguf.py --outtype q8_0 from the llama-cpp-python sdist.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
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


def resident(files: list[Path]) -> tuple[int, int] | None:
    """(bytes in the page cache, bytes in all) over ``files``, from fincore; None without it."""
    if not shutil.which("fincore") or not files:
        return None
    res = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES,SIZE", *map(str, files)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        return None
    pairs = [tuple(map(int, line.split())) for line in res.stdout.splitlines() if line.strip()]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def measure(
    cmd: list[str],
    label: str,
    env: dict | None = None,
    cold: bool = True,
    warm_files: list[Path] | None = None,
    cwd: Path | None = None,
) -> dict:
    """Run ``cmd`` (from a cold cache unless ``cold`` is false; ``warm_files`` are read first):
    wall seconds, user/sys CPU-seconds and peak RSS of its process tree."""
    was_cold = drop_caches() if cold else False
    for f in warm_files or []:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok = proc.returncode == 0
    if not ok:
        print(f"{label} failed ({proc.returncode}): {err.strip().splitlines()[-1:]}", file=sys.stderr)
    return {
        "step": label,
        "seconds": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "peak_rss": peak[0],
        "ok": ok,
        "cold_cache": was_cold,
    }


def read_floor(files: list[Path], direct: bool) -> dict:
    """Both inputs read once, sequentially, in 16 MiB reads (dd), through the cache or O_DIRECT."""
    flag = " iflag=direct" if direct else ""
    script = "; ".join(f"dd if='{f}' of=/dev/null bs=16M{flag} status=none" for f in files)
    return measure(["sh", "-c", script], f"floor read, dd bs=16M{flag}")


def write_floor(out_bytes: int, scratch: Path, label: str) -> dict:
    """As many bytes as an output, written in 16 MiB blocks and fdatasynced (dd conv=fdatasync)."""
    count = -(-out_bytes // (16 << 20))
    row = measure(
        ["dd", "if=/dev/zero", f"of={scratch}", "bs=16M", f"count={count}", "conv=fdatasync", "status=none"],
        f"floor write {label}",
    )
    scratch.unlink(missing_ok=True)
    return row


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


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


def _build_cmd(sft: Path, rlhf: Path, quant: str, out: Path, *extra: str) -> list[str]:
    return [
        *[PY, "-c", "from expo_gguf.cli import main; main()"],
        *["build", "--sft", str(sft), "--rlhf", str(rlhf), "-q", quant, "--outdir", str(out), "--force", *extra],
    ]


def _built(out: Path, quant: str) -> Path:
    return next(out.glob(f"*-{quant.upper()}.gguf"))


def _two_pass(shape: str, sft: Path, rlhf: Path, in_bytes: int, args: argparse.Namespace) -> list[dict]:
    workdir: Path = args.workdir
    need = in_bytes * 1.15  # both models resident in bf16, plus the copy a save makes per tensor
    avail = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemAvailable"))) * 1024
    if need > avail:
        note = f"not run: needs ~{need / 2**30:.1f} GiB RAM, {avail / 2**30:.1f} GiB available"
        return [{"step": "two-pass", "kind": "two-pass", "ok": False, "seconds": None, "peak_rss": None, "note": note}]
    merged = workdir / f"merged-{shape}"
    rows = [
        measure([PY, __file__, "--_torch", str(sft), str(rlhf), str(merged)], "two-pass 1: torch extrapolate + save"),
        measure(
            [PY, str(convert_script(args.llama_cpp_src)), str(merged), "--outtype", "q8_0"]
            + ["--outfile", str(workdir / f"twopass-{shape}.gguf")],
            "two-pass 2: convert_hf_to_gguf --outtype q8_0",
        ),
    ]
    for p in [workdir / f"twopass-{shape}.gguf", *merged.glob("*")]:
        p.unlink(missing_ok=True)
    for r in rows:
        r.update(kind="two-pass", quant="q8_0")
    return rows


def bench_shape(shape: str, args: argparse.Namespace, two_pass: bool) -> list[dict]:
    """Side by side, ``--repeat`` times: both read floors, then per quant the baseline build (if
    any), ours cold, the write floor of its output, and ours warm (plain and --keep-cache)."""
    sft, rlhf = make_pair(shape, args.workdir, args.pair)
    inputs = sorted(sft.glob("*.safetensors")) + sorted(rlhf.glob("*.safetensors"))
    in_bytes = sum(f.stat().st_size for f in inputs)
    out = args.workdir / f"out-{shape}"
    rows: list[dict] = []
    for rep in range(args.repeat):
        rows.append(read_floor(inputs, direct=False) | {"kind": "floor_read_buffered"})
        rows.append(read_floor(inputs, direct=True) | {"kind": "floor_read_direct"})
        for quant in args.quants.split(","):
            q = {"quant": quant}
            if args.baseline:
                # `python -c` puts the working directory first on sys.path: run it from the checkout
                env = dict(os.environ, PYTHONPATH=str(args.baseline.resolve()))
                cmd = _build_cmd(sft, rlhf, quant, out)
                r = measure(cmd, f"baseline build -q {quant}", env=env, cwd=args.baseline)
                if r["ok"]:
                    r["sha256"] = sha256(_built(out, quant))
                    _built(out, quant).unlink()
                rows.append(r | q | {"kind": "baseline"})
            r = measure(_build_cmd(sft, rlhf, quant, out), f"expo-gguf build -q {quant}")
            if not r["ok"]:
                rows.append(r | q | {"kind": "ours"})
                continue
            built = _built(out, quant)
            r.update(resident_in=resident(inputs), resident_out=resident([built]), output_bytes=built.stat().st_size)
            r["sha256"] = sha256(built)
            built.unlink()
            rows.append(r | q | {"kind": "ours"})
            rows.append(
                write_floor(r["output_bytes"], args.workdir / "floor.bin", quant)
                | q
                | {"kind": "floor_write", "output_bytes": r["output_bytes"]}
            )
            if args.warm:
                for kind, extra in (("ours_warm", ()), ("ours_keep_cache_warm", ("--keep-cache",))):
                    w = measure(
                        _build_cmd(sft, rlhf, quant, out, *extra),
                        f"expo-gguf build -q {quant} {' '.join(extra)} (warm cache)",
                        cold=False,
                        warm_files=inputs,
                    )
                    if w["ok"]:
                        w["sha256"] = sha256(_built(out, quant))
                        _built(out, quant).unlink()
                    rows.append(w | q | {"kind": kind})
            print(f"  {shape} run {rep + 1}/{args.repeat} {quant}: {r['seconds']:.2f} s", file=sys.stderr)
    if two_pass:
        rows += _two_pass(shape, sft, rlhf, in_bytes, args)
    for r in rows:
        r.update(shape=shape, input_bytes=in_bytes)
    return rows


def bench_alphas(shape: str, alphas: str, args: argparse.Namespace) -> list[dict]:
    """Several alphas: one build that reads the inputs once vs one build per alpha, and the I/O
    floor of that work (inputs read once with O_DIRECT, every output written)."""
    sft, rlhf = make_pair(shape, args.workdir, args.pair)
    inputs = sorted(sft.glob("*.safetensors")) + sorted(rlhf.glob("*.safetensors"))
    in_bytes = sum(f.stat().st_size for f in inputs)
    out = args.workdir / f"out-{shape}"
    one = measure(_build_cmd(sft, rlhf, "q8_0", out, "--alpha", alphas), f"one build, --alpha {alphas}")
    files = sorted(out.glob("*-a*-Q8_0.gguf"))
    out_bytes = sum(f.stat().st_size for f in files)
    for f in files:
        f.unlink()
    separate = [
        measure(_build_cmd(sft, rlhf, "q8_0", out, "--alpha", a), f"separate build, --alpha {a}")
        for a in alphas.split(",")
    ]
    total = {
        "step": f"{len(separate)} separate builds (sum)",
        "seconds": sum(r["seconds"] for r in separate),
        "peak_rss": max(r["peak_rss"] for r in separate),
        "ok": all(r["ok"] for r in separate),
        "cold_cache": all(r["cold_cache"] for r in separate),
    }
    floor_r, floor_w = read_floor(inputs, direct=True), write_floor(out_bytes, args.workdir / "floor.bin", "all")
    floor = {"step": "I/O floor (O_DIRECT read + write)", "seconds": floor_r["seconds"] + floor_w["seconds"]}
    rows = [floor_r, floor_w, floor, one, *separate, total]
    for r in rows:
        r.update(shape=shape, input_bytes=in_bytes, output_bytes=out_bytes)
    print(
        f"{shape}: one build / floor = {one['seconds'] / floor['seconds']:.2f}x; "
        f"separate builds / one build = {total['seconds'] / one['seconds']:.2f}x"
    )
    return rows


def _pct(res: tuple[int, int] | None) -> str:
    return f"{100 * res[0] / res[1]:.1f}%" if res and res[1] else "-"


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_remote(shape: str, args: argparse.Namespace) -> list[dict]:
    """``build --remote`` from the loopback hub of the tests (a separate process serving the pair
    from disk by range requests, on 127.0.0.1) vs the local build of the same pair: the cost of
    the HTTP path (requests, parsing, sha256, the stream window), without a real network's
    bandwidth. CPU seconds (user + sys, from the kernel's accounting of each finished process)
    are printed too: on a shared machine they vary far less than wall time."""
    import tempfile

    sft, rlhf = make_pair(shape, args.workdir, args.pair)
    inputs = sorted(sft.glob("*.safetensors")) + sorted(rlhf.glob("*.safetensors"))
    in_bytes = sum(f.stat().st_size for f in inputs)
    gb = in_bytes / 1e9
    out = args.workdir / f"out-{shape}"
    common = ["-q", "q8_0", "--outdir", str(out), "--force", "--name", "bench"]
    exe = str(Path(PY).parent / "expo-gguf")
    c0 = _children_cpu()
    local = measure([exe, "build", "--sft", str(sft), "--rlhf", str(rlhf), *common], "local build -q q8_0")
    local["cpu_seconds"] = _children_cpu() - c0
    server = subprocess.Popen(
        [PY, str(ROOT / "tests" / "hub_server.py"), f"bench/sft={sft}", f"bench/rlhf={rlhf}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()  # printed once every file is hashed
        with tempfile.TemporaryDirectory() as home:
            os.environ.update(HF_ENDPOINT=url, HF_HOME=home)
            os.environ.pop("HF_TOKEN", None)
            c0 = _children_cpu()
            remote = measure(
                [exe, "build", "--remote", "--sft", "bench/sft", "--rlhf", "bench/rlhf", *common],
                "remote build -q q8_0 (loopback hub)",
            )
            remote["cpu_seconds"] = _children_cpu() - c0
    finally:
        server.terminate()
        server.wait()
    out_bytes = sum(f.stat().st_size for f in out.glob("bench-*.gguf"))
    rows = [local, remote]
    for r in rows:
        r.update(shape=shape, input_bytes=in_bytes, output_bytes=out_bytes)
    print(
        f"{shape}: remote / local = {remote['seconds'] / local['seconds']:.2f}x wall "
        f"({(remote['seconds'] - local['seconds']) / gb:+.2f} s per GB of input); "
        f"build CPU {local['cpu_seconds'] / gb:.2f} -> {remote['cpu_seconds'] / gb:.2f} s per GB "
        f"({remote['cpu_seconds'] / local['cpu_seconds']:.2f}x; the server's own CPU not counted)"
    )
    return rows


def report(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="expo-gguf build benchmark")
    for c in ("shape", "step", "wall s", "user s", "sys s", "GB/s in", "peak RSS", "cached in/out", "note"):
        t.add_column(c)
    for r in rows:
        secs = r.get("seconds")
        t.add_row(
            r["shape"],
            r["step"],
            f"{secs:.2f}" if secs else "-",
            f"{r['user']:.2f}" if "user" in r else "-",
            f"{r['sys']:.2f}" if "sys" in r else "-",
            f"{r['input_bytes'] / secs / 1e9:.2f}" if secs and "floor write" not in r["step"] else "-",
            f"{r['peak_rss'] / 2**20:.0f} MiB" if r.get("peak_rss") else "-",
            f"{_pct(r.get('resident_in'))} / {_pct(r.get('resident_out'))}" if "resident_in" in r else "-",
            r.get("note", "" if r.get("cold_cache", True) or "warm" in r["step"] else "warm cache"),
        )
    Console(width=max(160, shutil.get_terminal_size().columns)).print(t)
    summarize(rows)


def _median(rows: list[dict], kind: str, quant: str | None = None, key: str = "seconds") -> float | None:
    vals = [
        r[key] for r in rows if r.get("kind") == kind and r.get("ok") and (quant is None or r.get("quant") == quant)
    ]
    return statistics.median(vals) if vals else None


def summarize(rows: list[dict]) -> None:
    """The ratios the performance page quotes: medians over --repeat, all measured side by side."""
    for shape in dict.fromkeys(r["shape"] for r in rows):
        rs = [r for r in rows if r["shape"] == shape and r.get("kind")]
        if not rs:  # --remote rows print their own ratios
            continue
        gb = rs[0]["input_bytes"] / 1e9
        rd, rb = _median(rs, "floor_read_direct"), _median(rs, "floor_read_buffered")
        if rd is None or rb is None:
            continue
        sys_dd = _median(rs, "floor_read_buffered", key="sys")
        sys_direct = _median(rs, "floor_read_direct", key="sys")
        print(f"{shape}: kernel CPU-s per GB read: dd bs=16M {sys_dd / gb:.3f}, dd iflag=direct {sys_direct / gb:.3f}")
        for quant in dict.fromkeys(r["quant"] for r in rs if r.get("quant") and r["kind"] == "ours"):
            ours, wf = _median(rs, "ours", quant), _median(rs, "floor_write", quant)
            if ours is None or wf is None:
                continue
            line = [
                f"{shape} {quant}: ours {ours:.2f} s; / floor (O_DIRECT read + write) {ours / (rd + wf):.2f}x",
                f"/ floor (buffered read + write) {ours / (rb + wf):.2f}x",
                f"sys CPU-s per GB read {_median(rs, 'ours', quant, 'sys') / gb:.3f}",
            ]
            warm = _median(rs, "ours_warm", quant)
            if warm:
                line.append(f"cold / warm {ours / warm:.2f}x")
            kc = _median(rs, "ours_keep_cache_warm", quant)
            if kc:
                line.append(f"cold / warm --keep-cache {ours / kc:.2f}x")
            base = _median(rs, "baseline", quant)
            if base:
                line.append(f"baseline / ours {base / ours:.2f}x")
            shas = [r["sha256"] for r in rs if r.get("quant") == quant and r.get("sha256")]
            line.append(f"sha256 {'identical' if len(set(shas)) == 1 else 'DIFFERENT'} in {len(shas)} builds")
            print("; ".join(line))
        two = [r["seconds"] for r in rs if r["kind"] == "two-pass" and r.get("seconds")]
        ours = _median(rs, "ours", "q8_0")
        if len(two) == 2 and ours:
            print(f"{shape}: two-pass / ours (q8_0) = {sum(two) / ours:.2f}x")


def chart(rows: list[dict], png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: pip install matplotlib for --png", file=sys.stderr)
        return
    ours = [r for r in rows if r.get("kind") == "ours" and r.get("quant") == "q8_0" and r["ok"]]
    gb = [r["input_bytes"] / 1e9 for r in ours]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(gb, [r["seconds"] for r in ours], "o-", label="expo-gguf build")
    floors = [
        (
            r["input_bytes"] / 1e9,
            r["seconds"] + (_median([x for x in rows if x["shape"] == r["shape"]], "floor_write", "q8_0") or 0),
        )
        for r in rows
        if r.get("kind") == "floor_read_direct"
    ]
    a.plot([f[0] for f in floors], [f[1] for f in floors], "s--", label="I/O floor (O_DIRECT read + write)")
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
    ap.add_argument("--quants", default="q8_0,f16", help="comma list, one build each (default q8_0,f16)")
    ap.add_argument("--repeat", type=int, default=1, help="run the whole side-by-side set this many times")
    ap.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm-cache runs")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. main) built side by side, sha256 compared")
    ap.add_argument("--alphas", help="comma list: one several-alpha build vs one build per alpha, and their floor")
    ap.add_argument("--remote", action="store_true", help="build --remote from a loopback hub vs the local build")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    shapes = args.scale.split(",") if args.scale else [args.shape]
    rows: list[dict] = []
    for shape in shapes:
        if args.remote:
            rows += bench_remote(shape, args)
        elif args.alphas:
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
