"""Assemble the calibration text that ``--imatrix auto`` runs a model over.

    python scripts/make_calibration.py [OUT]   # default: expo_gguf/data/calibration/calibration.txt

Everything in it may be redistributed (expo_gguf/data/calibration/README.md lists each part and
its licence): text written for this project (scripts/data/calibration_written.txt: chat in
several languages, prose, instructions), generated text (arithmetic, tables, CSV/JSON records,
dates, numbers in words; seeded, so the output is the same every run), four permissive licence
texts, and modules of the Python standard library (PSF licence). Deliberately nothing from
scripts/data/sample.txt, the text docs/quality.md scores on: the script refuses to write a text
sharing a 10-word run with it.
"""

from __future__ import annotations

import json
import random
import re
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "expo_gguf" / "data" / "calibration" / "calibration.txt"
WRITTEN = ROOT / "scripts" / "data" / "calibration_written.txt"
SCORED = ROOT / "scripts" / "data" / "sample.txt"
# stdlib modules (PSF licence) of varied style: text processing, numerics, data structures
STDLIB = ("textwrap.py", "fractions.py", "heapq.py", "bisect.py", "colorsys.py", "statistics.py", "shlex.py")


def _licence(dist: str, starts: str) -> str:
    """The licence file a package ships, found through its installed metadata."""
    files = metadata.distribution(dist).files or []
    for f in files:
        if re.search(r"(LICEN[CS]E|COPYING)", f.name, re.IGNORECASE):
            text = Path(str(f.locate())).read_text(encoding="utf-8")
            if text.lstrip().startswith(starts):
                return text.strip()
    raise SystemExit(f"no {starts!r} licence file in {dist}'s metadata")


def licences() -> list[tuple[str, str]]:
    psf = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    return [
        ("the Apache License, Version 2.0", _apache()),
        ("the MIT License, as shipped by rich", _licence("rich", "Copyright")),
        ("the BSD 3-Clause License, as shipped by click", _licence("click", "Copyright")),
        ("the Python Software Foundation License", psf.read_text(encoding="utf-8").strip()),
    ]


def _apache() -> str:
    for dist in ("safetensors", "transformers", "huggingface_hub", "requests"):
        try:
            return _licence(dist, "Apache License")
        except (SystemExit, metadata.PackageNotFoundError):
            continue
    raise SystemExit("no Apache-2.0 licence text found in the installed packages")


ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
ONES += "seventeen eighteen nineteen"
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def words(n: int) -> str:
    """English number words up to 999,999."""
    ones = ONES.split()
    if n < 20:
        return ones[n]
    if n < 100:
        return TENS[n // 10 - 2] + ("-" + ones[n % 10] if n % 10 else "")
    if n < 1000:
        return ones[n // 100] + " hundred" + (" and " + words(n % 100) if n % 100 else "")
    return (
        words(n // 1000) + " thousand" + ((", " if n % 1000 >= 100 else " and ") + words(n % 1000) if n % 1000 else "")
    )


def roman(n: int) -> str:
    out = ""
    for value, sym in zip(
        (1000, 900, 500, 400, 100, 90, 50, 40, 10, 9, 5, 4, 1),
        ("M", "CM", "D", "CD", "C", "XC", "L", "XL", "X", "IX", "V", "IV", "I"),
    ):
        while n >= value:
            out, n = out + sym, n - value
    return out


def generated(rng: random.Random) -> str:
    parts = []
    lines = []
    for _ in range(120):
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        op = rng.choice("+-×÷%")
        if op == "+":
            lines.append(f"User: What is {a} + {b}?\nAssistant: {a} + {b} = {a + b}.")
        elif op == "-":
            lines.append(f"User: What is {a} - {b}?\nAssistant: {a} - {b} = {a - b}.")
        elif op == "×":
            lines.append(f"User: Multiply {a} by {b}.\nAssistant: {a} × {b} = {a * b}.")
        elif op == "÷":
            lines.append(f"User: Divide {a} by {b}.\nAssistant: {a} ÷ {b} ≈ {a / b:.4f}.")
        else:
            lines.append(f"User: What is {b}% of {a}?\nAssistant: {b}% of {a} is {a * b / 100:g}.")
    parts.append("\n\n".join(lines))

    cities = ["Aberdeen", "Bergen", "Cádiz", "Dresden", "Eindhoven", "Florence", "Graz", "Helsinki", "Izmir", "Kraków"]
    rows = ["city,month,mean_temp_c,rain_mm,sun_hours"]
    for c in cities:
        for m in range(1, 13):
            rows.append(f"{c},{m:02d},{rng.uniform(-8, 31):.1f},{rng.uniform(0, 190):.0f},{rng.uniform(20, 340):.0f}")
    parts.append("Monthly weather (synthetic data):\n" + "\n".join(rows))

    records = []
    first = ["Ana", "Bo", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Iker", "Jana", "Kofi", "Lea", "Mateo"]
    items = ["notebook", "pencil set", "desk lamp", "backpack", "water bottle", "headphones", "stapler", "mug"]
    for i in range(60):
        records.append(
            {
                "id": 1000 + i,
                "customer": rng.choice(first),
                "item": rng.choice(items),
                "quantity": rng.randint(1, 9),
                "unit_price": round(rng.uniform(1.5, 89.0), 2),
                "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "paid": rng.random() < 0.8,
            }
        )
    parts.append("Orders (synthetic, JSON lines):\n" + "\n".join(json.dumps(r, ensure_ascii=False) for r in records))

    table = ["| product | price (EUR) | stock | rating |", "|---|--:|--:|--:|"]
    for it in items:
        table.append(f"| {it} | {rng.uniform(2, 120):.2f} | {rng.randint(0, 500)} | {rng.uniform(2.5, 5):.1f} |")
    parts.append("Inventory:\n" + "\n".join(table))

    numbers = [
        f"{n} — {words(n)} — {roman(n) if n < 4000 else ''}".rstrip(" —")
        for n in sorted(rng.sample(range(1, 3999), 80))
    ]
    numbers += [f"{n:,} — {words(n)}" for n in sorted(rng.sample(range(4000, 999_999), 40))]
    parts.append("Numbers in digits, words and Roman numerals:\n" + "\n".join(numbers))

    units = []
    for _ in range(50):
        km = rng.uniform(0.5, 500)
        kg = rng.uniform(0.1, 120)
        c = rng.uniform(-30, 45)
        units.append(
            f"{km:.1f} km = {km / 1.609344:.2f} mi; {kg:.2f} kg = {kg * 2.20462:.2f} lb; "
            f"{c:.1f} °C = {c * 9 / 5 + 32:.1f} °F"
        )
    parts.append("Unit conversions:\n" + "\n".join(units))

    stamps = []
    for _ in range(40):
        y, mo, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        h, mi, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
        stamps.append(
            f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z | {d:02d}/{mo:02d}/{y} | {mo}/{d}/{y % 100:02d} | "
            f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} | "
            f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        )
    parts.append("Dates, versions and phone numbers (synthetic):\n" + "\n".join(stamps))

    times = [f"{a} × {b} = {a * b}" for a in range(2, 13) for b in range(2, 13)]
    parts.append("Multiplication table:\n" + "\n".join(times))
    return "\n\n".join(parts)


def stdlib_code() -> list[tuple[str, str]]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return [(name, (lib / name).read_text(encoding="utf-8").strip()) for name in STDLIB]


def shares_a_run(text: str, other: str, n: int = 10) -> str | None:
    def runs(s: str) -> set[tuple[str, ...]]:
        w = re.findall(r"\w+", s.lower())
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}

    common = runs(text) & runs(other)
    return " ".join(next(iter(common))) if common else None


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    rng = random.Random(15)
    sections = [WRITTEN.read_text(encoding="utf-8").strip(), generated(rng)]
    sections += [f"--- {title} ---\n{text}" for title, text in licences()]
    sections += [
        f"# Python standard library, {name} (Python {sys.version.split()[0]})\n{code}" for name, code in stdlib_code()
    ]
    text = "\n\n".join(sections) + "\n"
    run = shares_a_run(text, SCORED.read_text(encoding="utf-8"))
    if run:
        print(f"error: the calibration text shares a run of words with {SCORED.name}: {run!r}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"{out}: {len(text.encode()):,} bytes, {len(text.split()):,} words", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
