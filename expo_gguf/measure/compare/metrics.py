"""The figures ``compare`` reports per model, and the rules its verdicts follow.

Repetition is measured on words (runs of letters and digits, lower-cased; punctuation left out,
so the brackets and quotes of code do not count as repeats), not on model tokens, so models with
different tokenizers score alike:

- distinct-2 (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models"): distinct word bigrams / all word bigrams within each reply, averaged
  over replies. Per reply, so it does not fall just because there are more prompts; low when a
  model keeps saying the same things.
- repeated 4-grams (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training",
  seq-rep-4): the share of a reply's word 4-grams that already occurred earlier in the same
  reply, pooled over replies. High when a model loops, the degeneration a too-large alpha or a
  too-small quant shows first.

Verdicts. Each text figure depends on the model's size, the prompts and the reply length, so
with ``--ref`` a model is judged against the reference's own figure, flagged only when it is
worse by more than a margin; without one (and for the reference itself) against a fixed limit.
The mean KL divergence is a distance from the reference: for a quant of the reference, what the
quant lost; for another alpha, how far it moved the model, which is expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..divergence import KldStats

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _grams(text: str, n: int) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct word n-grams over all n-grams of each text, averaged over the texts that have
    any; None when none has."""
    shares = [len(set(g)) / len(g) for g in (_grams(t, n) for t in texts) if g]
    return sum(shares) / len(shares) if shares else None


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float | None:
    """Share of n-grams repeating an earlier n-gram of the same text, pooled; None when there are none."""
    total = repeats = 0
    for grams in (_grams(t, n) for t in texts):
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else None


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


def figures(
    texts: Sequence[str], tokens: Sequence[int], cut: Sequence[bool], gen_tps: float, kld: KldStats | None
) -> Figures:
    n = len(texts)
    return Figures(
        replies=n,
        mean_tokens=sum(tokens) / n,
        mean_chars=sum(map(len, texts)) / n,
        distinct2=distinct_n(texts, 2),
        rep4=repeated_ngram_rate(texts, 4),
        runaway=sum(cut) / n,
        gen_tps=gen_tps,
        kld_mean=kld.mean if kld else None,
        kld_p99=kld.p99 if kld else None,
        same_top_pct=kld.same_top_pct if kld else None,
    )


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _points(x: float) -> str:
    return f"{100 * x:g} points"


@dataclass(frozen=True)
class Threshold:
    figure: str  # a Figures field
    label: str
    limit: float  # without a reference
    margin: float | None  # with one: how much worse than the reference's own figure; None = limit always
    above: bool  # worse when higher
    show: Callable[[float], str]
    show_margin: Callable[[float], str]
    meaning: str


THRESHOLDS = (
    Threshold("rep4", "repeated 4-grams", 0.10, 0.05, True, pct, _points, "it repeats itself"),
    Threshold(
        "distinct2",
        "distinct-2",
        0.50,
        0.05,
        False,
        lambda x: f"{x:.2f}",
        lambda x: f"{x:.2f}",
        "its wording is repetitive",
    ),
    Threshold(
        "runaway", "runaway", 0.20, 0.15, True, pct, _points, "replies cut at --max-tokens, long or never ending"
    ),
    Threshold(
        "kld_mean",
        "mean KLD",
        0.10,
        None,
        True,
        lambda x: f"{x:.3g}",
        lambda x: f"{x:.3g}",
        "distance from the reference: a loss for a quant of it, expected for another alpha",
    ),
)


def thresholds_text() -> str:
    """The rules in two sentences, for --help, the report and the README."""
    text = [t for t in THRESHOLDS if t.margin is not None]
    fixed = ", ".join(f"{t.label} {'>' if t.above else '<'} {t.show(t.limit)}" for t in text)
    relative = ", ".join(
        f"{t.label} more than {t.show_margin(t.margin)} {'above' if t.above else 'below'}"
        for t in text
        if t.margin is not None
    )
    always = "; ".join(f"{t.label} > {t.show(t.limit)} ({t.meaning})" for t in THRESHOLDS if t.margin is None)
    return (
        f"without --ref, and for the reference itself: {fixed}; with --ref, each model against the "
        f"reference's own figure: {relative}; and {always}"
    )


def crossings(f: Figures, ref: Figures | None = None) -> list[str]:
    """Every figure past its rule, each as 'label value > bound (meaning)'; ``ref`` is the
    reference's figures (None for the reference itself, or without one)."""
    found = []
    for t in THRESHOLDS:
        value = getattr(f, t.figure)
        base = getattr(ref, t.figure) if ref is not None and t.margin is not None else None
        if value is None:
            continue
        if base is None:
            bound, why = t.limit, ""
        else:
            bound = base + t.margin if t.above else base - t.margin
            why = f"reference {t.show(base)} {'+' if t.above else '-'} {t.show_margin(t.margin)}: "
        if value > bound if t.above else value < bound:
            found.append(f"{t.label} {t.show(value)} {'>' if t.above else '<'} {t.show(bound)} ({why}{t.meaning})")
    return found


def verdict(f: Figures, ref: Figures | None = None) -> str:
    found = crossings(f, ref)
    return "; ".join(found) if found else "no figure crosses its threshold"
