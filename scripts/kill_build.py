"""kill -9 a build at random moments, many times: a file under its final name is always complete.

    python scripts/kill_build.py --runs 50

Builds the tiny pair to Q8_0 + Q4_K_M once to get reference hashes (the build is deterministic),
then starts the same build over and over and SIGKILLs it after a random delay. After each kill,
every *.gguf under its final name must hash to the reference; temporaries (*.part) may remain and
the next build must remove them. Prints runs, kills by phase, and what was found.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPO = str(Path(sys.executable).parent / "expo-gguf")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_cmd(sft: Path, rlhf: Path, out: Path) -> list[str]:
    return [EXPO, "build", "--sft", str(sft), "--rlhf", str(rlhf), "-q", "q8_0,q4_k_m", "--outdir", str(out), "--force"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/expo-kill"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_synthetic_pair import make_pair

    shutil.rmtree(args.work, ignore_errors=True)
    sft, rlhf = make_pair(args.work / "pair", "tiny", 0)
    ref_dir, out = args.work / "ref", args.work / "out"
    t0 = time.perf_counter()
    subprocess.run(build_cmd(sft, rlhf, ref_dir), check=True, capture_output=True)
    full = time.perf_counter() - t0
    ref = {p.name: sha(p) for p in ref_dir.glob("*.gguf")}
    rng = random.Random(args.seed)
    seen: Counter[str] = Counter()
    bad: list[str] = []
    for _ in range(args.runs):
        proc = subprocess.Popen(build_cmd(sft, rlhf, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, full * 1.1))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen["finished before the kill" if finished else "killed"] += 1
        seen["runs leaving *.part"] += bool(list(out.glob("*.part")) + list(out.glob(".*.part")))
        for f in out.glob("*.gguf"):
            seen["final files checked"] += 1
            if sha(f) != ref.get(f.name):
                bad.append(f"{f.name} under its final name does not match the reference")
    res = subprocess.run(build_cmd(sft, rlhf, out), capture_output=True)
    leftovers = sorted(p.name for p in out.iterdir() if p.name.endswith(".part"))
    print(f"runs: {args.runs} (a full build takes {full:.1f} s); " + ", ".join(f"{k}: {v}" for k, v in seen.items()))
    print(f"incomplete or wrong files under a final name: {len(bad)}")
    print(f"a clean build afterwards: exit {res.returncode}, temporaries left: {leftovers or 'none'}")
    for b in bad[:10]:
        print("  " + b)
    sys.exit(1 if bad or leftovers or res.returncode else 0)


if __name__ == "__main__":
    main()
