"""What ``compare`` writes: the JSON of every figure and reply, and the markdown report.

Both are written to a temporary file beside the target and renamed into place, so a crash or
Ctrl+C never leaves a half-written report; where they go is checked before any model runs.
"""

from __future__ import annotations

import dataclasses
import html
import os
import tempfile
from pathlib import Path

from .compare import Comparison, ModelRun
from .compare_metrics import THRESHOLDS, thresholds_text, verdict
from .errors import ExpoError
from .units import human_bytes


def check_writable(path: Path, option: str) -> None:
    """Refuse an output path whose folder is missing or which is a folder, before the long run."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ExpoError(f"{option} {path} is a folder; give a file name")
    if not parent.is_dir():
        raise ExpoError(f"{option} {path}: no such folder {parent}")
    if not os.access(parent, os.W_OK):
        raise ExpoError(f"{option} {path}: cannot write in {parent}")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once: a temporary file in the same folder, then a rename."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    except OSError as e:
        raise ExpoError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ExpoError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def to_json(c: Comparison) -> dict[str, object]:
    return {
        "prompts": c.prompts_name,
        "settings": dataclasses.asdict(c.options),
        "reference": str(c.reference) if c.reference else None,
        "thresholds": [{"figure": t.figure, "label": t.label, "limit": t.limit,
                        "crossed_when": "above" if t.above else "below"} for t in THRESHOLDS],
        "prompt_list": [{"id": p.id, "category": p.category, "messages": list(p.messages)} for p in c.prompts],
        "models": [_model_json(r, c) for r in c.runs],
    }


def _model_json(r: ModelRun, c: Comparison) -> dict[str, object]:
    f = r.figures
    return {
        "label": r.label, "file": str(r.path), "type": r.file_type, "size_bytes": r.size_bytes,
        "reference": r.is_reference, "figures": dataclasses.asdict(f),
        "kld": dataclasses.asdict(r.kld) if r.kld else None, "verdict": verdict(f),
        "replies": [{"prompt": p.id, "text": x.text, "tokens": x.tokens, "chars": len(x.text),
                     "stop": x.stop, "kld_mean": x.kld_mean} for p, x in zip(c.prompts, r.replies)],
    }


COLUMNS = ("model", "type", "size", "tokens", "chars", "distinct-2", "rep. 4-grams", "runaway",
           "mean KLD", "KLD p99", "gen tok/s")


def table_rows(c: Comparison) -> list[tuple[str, ...]]:
    """The table's cells, shared by the terminal and the markdown report."""
    rows = []
    for r in c.runs:
        f = r.figures
        if c.reference is None:
            kld = ("", "")
        elif r.is_reference:
            kld = ("reference", "")
        else:
            kld = (_num(f.kld_mean, 4), _num(f.kld_p99, 3))
        rows.append((r.label, r.file_type, human_bytes(r.size_bytes), f"{f.mean_tokens:.1f}",
                     f"{f.mean_chars:.0f}", _num(f.distinct2, 3), _pct(f.rep4), _pct(f.runaway), *kld,
                     f"{f.gen_tps:.1f}"))
    return rows


def _num(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def verdict_lines(c: Comparison) -> list[str]:
    return [f"{r.label}: {verdict(r.figures)}" for r in c.runs]


def markdown(c: Comparison) -> str:
    o = c.options
    ref = f", KL divergence against `{c.reference.name}`" if c.reference else ""
    out = [f"# expo-gguf compare: {len(c.runs)} models, {len(c.prompts)} prompts", "",
           f"Prompts: {c.prompts_name}. Greedy, seed {o.seed}, at most {o.max_tokens} tokens per reply, "
           f"context {o.n_ctx}{ref}.", ""]
    out += _md_table(COLUMNS, table_rows(c))
    out += ["", "Verdicts (thresholds: " + thresholds_text() + "):", ""]
    out += [f"- {line}" for line in verdict_lines(c)]
    for i, p in enumerate(c.prompts):
        title = f"{i + 1}. {p.id}" if p.id != str(i + 1) else f"{i + 1}."
        out += ["", f"## {title}" + (f" ({p.category})" if p.category else ""), ""]
        for m in p.messages:
            out += [f"> **{m['role']}:** " + _cell(m["content"])]
        out += [""]
        cells = [r.replies[i].text if r.replies[i].text.strip() else "*(empty)*" for r in c.runs]
        notes = [_reply_note(r, i) for r in c.runs]
        out += _md_table(tuple(r.label for r in c.runs), [tuple(cells), tuple(notes)])
    return "\n".join(out) + "\n"


def _reply_note(r: ModelRun, i: int) -> str:
    x = r.replies[i]
    stop = "runaway" if x.stop == "max_tokens" else "ended"
    kld = f", KLD {x.kld_mean:.4f}" if x.kld_mean is not None else ""
    return f"*{x.tokens} tokens, {stop}{kld}*"


def _cell(text: str) -> str:
    """Text safe in one markdown table cell: HTML escaped, pipes escaped, newlines as <br>."""
    return html.escape(text.strip(), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]

