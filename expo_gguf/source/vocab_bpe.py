"""Byte-level BPE from a Hugging Face ``tokenizer.json`` (Llama 3), as llama.cpp's ``gpt2`` model.

llama.cpp does not run the tokenizer.json's pre-tokenizer: it runs its own implementation chosen
by name (``tokenizer.ggml.pre``). Its converter picks the name by hashing what transformers makes
of a test string; we read the pre-tokenizer's definition itself and accept only ones whose
llama.cpp counterpart we know to be the same, so a GGUF never tokenizes differently from the
checkpoint without anyone noticing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExpoError
from .checkpoint import read_json

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp pre-tokenizer name -> the tokenizer.json settings that tokenize the same way:
# (normalizer, pre-tokenizer steps, model.ignore_merges)
KNOWN_PRE: dict[str, tuple[object, ...]] = {
    "llama-bpe": (None, (("Split", LLAMA3_REGEX, "Isolated", False), ("ByteLevel", False, False)), True),
}


@dataclass(frozen=True)
class BpeBase:
    """What tokenizer.json itself holds: the pieces by id, merges, added tokens, BOS policy."""

    pre: str
    tokens: list[str]
    merges: list[str]
    added: dict[int, tuple[str, bool]]  # id -> (content, special)
    add_bos: bool | None  # from the post-processor; None when there is none
    add_eos: bool | None


def _pre_step(step: object) -> tuple[object, ...]:
    if not isinstance(step, dict):
        return ("?", json.dumps(step, sort_keys=True)[:200])
    kind = step.get("type")
    if kind == "Split":
        pattern = step.get("pattern")
        regex = pattern.get("Regex", pattern.get("String")) if isinstance(pattern, dict) else None
        return ("Split", regex, step.get("behavior"), bool(step.get("invert", False)))
    if kind == "ByteLevel":
        return ("ByteLevel", bool(step.get("add_prefix_space", True)), bool(step.get("use_regex", True)))
    return (str(kind), json.dumps(step, sort_keys=True)[:200])


def pre_signature(tok: dict) -> tuple[object, ...]:
    """The parts of a tokenizer.json that decide how text is cut before BPE runs."""
    pre = tok.get("pre_tokenizer")
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    normalizer = tok.get("normalizer")
    return (
        None if normalizer is None else json.dumps(normalizer, sort_keys=True)[:200],
        tuple(_pre_step(s) for s in (steps if isinstance(steps, list) else [steps])),
        bool(model.get("ignore_merges", False)),
    )


def detect_pre(tok: dict, where: Path) -> str:
    sig = pre_signature(tok)
    for name, known in KNOWN_PRE.items():
        if sig == known:
            return name
    parts = ("normalizer", "pre-tokenizer steps", "model.ignore_merges")
    near = [
        f"{name}: {', '.join(p for p, a, b in zip(parts, sig, known) if a != b)} differ"
        for name, known in KNOWN_PRE.items()
    ]
    raise ExpoError(
        f"{where}: pre-tokenizer not recognised ({'; '.join(near)}); a GGUF would tokenize "
        "differently from the checkpoint"
    )


def _merges(raw: object, where: Path) -> list[str]:
    if not isinstance(raw, list):
        raise ExpoError(f"{where}: model.merges is not a list")
    out = []
    for m in raw:
        if isinstance(m, str) and m.count(" ") == 1:
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) and p and " " not in p for p in m):
            out.append(f"{m[0]} {m[1]}")  # transformers >= 4.45 writes pairs
        else:
            raise ExpoError(f"{where}: merge {m!r} is not a pair of tokens")
    return out


def _bos_eos(tok: dict) -> tuple[bool | None, bool | None]:
    """Llama 3 adds BOS through a TemplateProcessing post-processor; transformers and gguf-py take
    its word over tokenizer_config.json's add_bos_token, and so do we. A post-processor without a
    template (ByteLevel alone) adds nothing; no post-processor at all leaves it to the config."""
    post = tok.get("post_processor")
    if not isinstance(post, dict):
        return None, None
    steps = post.get("processors") if post.get("type") == "Sequence" else [post]
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            single = step.get("single") if isinstance(step.get("single"), list) else []
            special = [isinstance(item, dict) and "SpecialToken" in item for item in single]
            return bool(special and special[0]), bool(len(special) > 1 and special[-1])
    return False, False


def load_bpe(root: Path) -> BpeBase:
    where = root / "tokenizer.json"
    tok = read_json(where, "tokenizer")
    model = tok.get("model")
    decoder = tok.get("decoder")
    if not (
        isinstance(model, dict)
        and model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and isinstance(decoder, dict)
        and decoder.get("type") == "ByteLevel"
    ):
        kind = model.get("type") if isinstance(model, dict) else model
        what = f"a {kind} tokenizer"
        if isinstance(model, dict) and model.get("byte_fallback"):
            what = "a SentencePiece-style BPE (byte_fallback) with no tokenizer.model beside it"
        raise ExpoError(
            f"{where}: {what}; supported: byte-level BPE (tokenizer.json) and SentencePiece (tokenizer.model)"
        )
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ExpoError(f"{where}: model.vocab is not a token -> id object")
    tokens: list[str | None] = [None] * len(vocab)
    for text, tid in vocab.items():
        if (
            not (isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < len(vocab))
            or tokens[tid] is not None
        ):
            raise ExpoError(f"{where}: token ids are not 0..{len(vocab) - 1}, each once (at {text!r}: {tid!r})")
        tokens[tid] = text
    added: dict[int, tuple[str, bool]] = {}
    entries = tok.get("added_tokens") or []
    if not isinstance(entries, list):
        raise ExpoError(f"{where}: added_tokens is not a list")
    for entry in entries:
        tid, content = (entry.get("id"), entry.get("content")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0 and isinstance(content, str)):
            raise ExpoError(f"{where}: added token {entry!r} has no id and content")
        added[tid] = (content, bool(entry.get("special", False)))
    return BpeBase(
        detect_pre(tok, where),
        tokens,
        _merges(model.get("merges"), where),
        added,  # type: ignore[arg-type]
        *_bos_eos(tok),
    )
