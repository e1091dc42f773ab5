"""The figures ``compare`` reports per model, and the thresholds its verdicts name.

Repetition is measured on words (runs of letters and digits, and single punctuation marks,
lower-cased), not on model tokens, so models with different tokenizers score alike:

- distinct-2 (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models"): distinct word bigrams / all word bigrams, over a model's replies
  together. Low when a model keeps saying the same things.
- repeated 4-grams (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training",
  seq-rep-4): the share of a reply's word 4-grams that already occurred earlier in the same
  reply, pooled over replies. High when a model loops, the degeneration a too-large alpha or a
  too-small quant shows first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _ngram_counts(texts: Sequence[str], n: int) -> tuple[int, int, set[tuple[str, ...]]]:
    """(n-grams, n-grams unique within their own text, distinct n-grams across all texts)."""
    total = unique_within = 0
    everywhere: set[tuple[str, ...]] = set()
    for text in texts:
        w = words(text)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        unique_within += len(set(grams))
        everywhere.update(grams)
    return total, unique_within, everywhere


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct word n-grams over all n-grams, across ``texts``; None when there are none."""
    total, _, everywhere = _ngram_counts(texts, n)
    return len(everywhere) / total if total else None


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float | None:
    """Share of n-grams repeating an earlier n-gram of the same text; None when there are none."""
    total, unique_within, _ = _ngram_counts(texts, n)
    return (total - unique_within) / total if total else None


@dataclass(frozen=True)
class Figures:
    """One model's row of the table; the KLD fields are None without ``--ref`` or for the reference."""

    replies: int
    mean_tokens: float
    mean_chars: float
    distinct2: float | None
    rep4: float | None
    runaway: float  # share of replies that reached --max-tokens without an end-of-generation token
    gen_tps: float
    kld_mean: float | None = None
    kld_p99: float | None = None
    same_top_pct: float | None = None


@dataclass(frozen=True)
class Threshold:
    figure: str  # a Figures field
    label: str
    limit: float
    above: bool  # crossed when the figure is above the limit (else below)
    show: Callable[[float], str]
    meaning: str


def _pct(x: float) -> str:
    return f"{100 * x:.1f}".removesuffix(".0") + " %"


THRESHOLDS = (
    Threshold("rep4", "repeated 4-grams", 0.10, True, _pct, "it repeats itself"),
    Threshold("distinct2", "distinct-2", 0.50, False, lambda x: f"{x:.2f}", "its wording is repetitive"),
    Threshold("runaway", "runaway", 0.20, True, _pct, "replies often do not end"),
    Threshold("kld_mean", "mean KLD", 0.10, True, lambda x: f"{x:.3g}", "far from the reference"),
)


def thresholds_text() -> str:
    """The rules in one sentence, for --help, the report and the README."""
    return "; ".join(f"{t.label} {'>' if t.above else '<'} {t.show(t.limit)} ({t.meaning})" for t in THRESHOLDS)


def crossings(f: Figures) -> list[str]:
    """Every figure past its threshold, each as 'label value > limit (meaning)'."""
    found = []
    for t in THRESHOLDS:
        value = getattr(f, t.figure)
        if value is not None and (value > t.limit if t.above else value < t.limit):
            found.append(f"{t.label} {t.show(value)} {'>' if t.above else '<'} {t.show(t.limit)} ({t.meaning})")
    return found


def verdict(f: Figures) -> str:
    found = crossings(f)
    return "; ".join(found) if found else "no figure crosses a threshold"
