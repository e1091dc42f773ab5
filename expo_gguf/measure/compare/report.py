"""What ``compare`` writes: the JSON of every figure and reply, and the markdown report.

Both go through ``write_text_atomic`` (a temporary file renamed into place), so a crash or
Ctrl+C never leaves a half-written report; where they go is checked before any model runs.
"""

from __future__ import annotations

import dataclasses
import html

from ..._units import human_bytes, plural
from .metrics import THRESHOLDS, pct, thresholds_text, verdict
from .run import Comparison, ModelRun


def to_json(c: Comparison) -> dict[str, object]:
    return {
        "prompts": c.prompts_name,
        "settings": dataclasses.asdict(c.options),
        "reference": str(c.reference) if c.reference else None,
        "thresholds": [
            {
                "figure": t.figure,
                "label": t.label,
                "limit": t.limit,
                "margin_from_reference": t.margin,
                "worse_when": "higher" if t.above else "lower",
            }
            for t in THRESHOLDS
        ],
        "prompt_list": [{"id": p.id, "category": p.category, "messages": list(p.messages)} for p in c.prompts],
        "models": [_model_json(r, c) for r in c.runs],
    }


def _model_json(r: ModelRun, c: Comparison) -> dict[str, object]:
    f = r.figures
    return {
        "label": r.label,
        "file": str(r.path),
        "type": r.file_type,
        "size_bytes": r.size_bytes,
        "reference": r.is_reference,
        "figures": dataclasses.asdict(f),
        "kld": dataclasses.asdict(r.kld) if r.kld else None,
        "verdict": _verdict(r, c),
        "replies": [
            {
                "prompt": p.id,
                "text": x.text,
                "tokens": x.tokens,
                "chars": len(x.text),
                "stop": x.stop,
                "kld_mean": x.kld_mean,
            }
            for p, x in zip(c.prompts, r.replies)
        ],
    }


COLUMNS = (
    "model",
    "type",
    "size",
    "tokens",
    "chars",
    "distinct-2",
    "rep. 4-grams",
    "runaway",
    "mean KLD",
    "KLD p99",
    "gen tok/s",
)
KLD_COLUMNS = ("mean KLD", "KLD p99")


def columns(c: Comparison) -> tuple[str, ...]:
    """The table's columns: the KLD ones only with a reference."""
    return COLUMNS if c.reference else tuple(x for x in COLUMNS if x not in KLD_COLUMNS)


def table_rows(c: Comparison) -> list[tuple[str, ...]]:
    """The table's cells in ``columns(c)`` order, shared by the terminal and the markdown report."""
    rows = []
    for r in c.runs:
        f = r.figures
        kld = ("reference", "") if r.is_reference else (_num(f.kld_mean, 4), _num(f.kld_p99, 3))
        cells = dict(
            zip(
                COLUMNS,
                (
                    r.label,
                    r.file_type,
                    human_bytes(r.size_bytes),
                    f"{f.mean_tokens:.1f}",
                    f"{f.mean_chars:.0f}",
                    _num(f.distinct2, 3),
                    pct(f.rep4),
                    pct(f.runaway),
                    *kld,
                    f"{f.gen_tps:.1f}",
                ),
            )
        )
        rows.append(tuple(cells[col] for col in columns(c)))
    return rows


def _num(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _verdict(r: ModelRun, c: Comparison) -> str:
    """The reference is judged by the fixed limits, every other model against the reference."""
    return verdict(r.figures, None if r.is_reference else c.reference_figures)


def verdict_lines(c: Comparison) -> list[str]:
    return [f"{r.label}: {_verdict(r, c)}" for r in c.runs]


def markdown(c: Comparison) -> str:
    o = c.options
    ref = f", KL divergence against `{c.reference.name}`" if c.reference else ""
    out = [
        f"# expo-gguf compare: {plural(len(c.runs), 'model')}, {plural(len(c.prompts), 'prompt')}",
        "",
        f"Prompts: {c.prompts_name}. Greedy, seed {o.seed}, at most {plural(o.max_tokens, 'token')} per reply, "
        f"context {o.n_ctx}{ref}.",
        "",
    ]
    out += [f"- `{r.label}`: `{r.path}`" for r in c.runs] + [""]
    out += _md_table(columns(c), table_rows(c))
    out += ["", "Verdicts (" + thresholds_text() + "):", ""]
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
    return f"*{plural(x.tokens, 'token')}, {stop}{kld}*"


def _cell(text: str) -> str:
    """Text safe in one markdown table cell: HTML escaped, pipes escaped, newlines as <br>."""
    return html.escape(text.strip(), quote=False).replace("|", "\\|").replace("\n", "<br>")


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
