"""The tokenizer as llama.cpp needs it: SentencePiece pieces, added tokens, special ids, template.

gguf-py reads the SentencePiece pieces; the added tokens we type ourselves, because gguf-py marks
them USER_DEFINED and OpenChat's ``<|end_of_turn|>`` must be CONTROL for llama.cpp to treat it as
a special token (and never print it). llama.cpp does not know ``<|end_of_turn|>`` by name either,
so we make it both eos and eot: generation then stops at the end of a turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .checkpoint import read_json
from .errors import ExpoError

log = logging.getLogger("expo_gguf")

END_OF_TURN = "<|end_of_turn|>"
OPENCHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + ': ' "
    "+ message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'GPT4 Correct Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class Vocab:
    """Everything the GGUF's ``tokenizer.*`` keys hold."""

    tokens: list[bytes] = field(repr=False)
    scores: list[float] = field(repr=False)
    types: list[int] = field(repr=False)
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str
    warnings: tuple[str, ...] = ()

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(self.tokens)
        w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        for kind, tid in self.special_ids.items():
            getattr(w, f"add_{kind}_token_id")(tid)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        w.add_chat_template(self.chat_template)


def _token_content(tok: object) -> str | None:
    content = tok if isinstance(tok, str) else tok.get("content") if isinstance(tok, dict) else None
    if not isinstance(content, str):
        return None
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell a lone surrogate ("\udcff"); no tokenizer can hold it
        raise ExpoError(f"token {content!r} is not valid Unicode text") from None
    return content


def _token_id(value: object, where: Path) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ExpoError(f"{where}: token id {value!r} is not a non-negative integer")


def _chat_template(root: Path, tok_config: dict) -> tuple[str, str | None]:
    """The checkpoint's own template byte for byte; OpenChat's only as an announced fallback."""
    tmpl = tok_config.get("chat_template")
    if isinstance(tmpl, list):  # named templates: take the default one, as transformers does
        tmpl = next((t.get("template") for t in tmpl if isinstance(t, dict) and t.get("name") == "default"), None)
    if isinstance(tmpl, str) and tmpl:
        return tmpl, None
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_bytes().decode("utf-8"), None  # byte for byte: no newline translation
    return OPENCHAT_TEMPLATE, f"{root.name} has no chat template; writing the OpenChat one"


def load_vocab(root: Path, vocab_size: int) -> Vocab:
    """Read ``tokenizer.model`` + ``tokenizer_config.json`` into exactly ``vocab_size`` tokens."""
    if not (root / "tokenizer.model").is_file():
        raise ExpoError(f"{root}: no tokenizer.model (a SentencePiece tokenizer is required)")
    tok_config = read_json(root / "tokenizer_config.json", "tokenizer config", required=False)
    added_json = root / "added_tokens.json"
    added: dict[int, tuple[str, bool]] = {}
    for content, tid in read_json(added_json, "added tokens", required=False).items():
        added[_token_id(tid, added_json)] = (content, False)  # typed by added_tokens_decoder, if it knows it
    decoder = tok_config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise ExpoError(f"{root / 'tokenizer_config.json'}: added_tokens_decoder is not an object")
    for tid, tok in decoder.items():
        content = _token_content(tok)
        if content is not None:
            special = bool(tok.get("special", False)) if isinstance(tok, dict) else True
            added[_token_id(tid, root / "tokenizer_config.json")] = (content, special)
    try:  # after our own checks of the JSON files, which gguf-py reads again less carefully
        spm = gguf.SentencePieceVocab(root)
    except Exception as e:  # sentencepiece raises plain RuntimeError/OSError on a bad file
        raise ExpoError(f"{root}: tokenizer files cannot be read: {e}") from None
    tokens, scores, types = [], [], []
    for text, score, ttype in spm.sentencepiece_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(ttype))
    n_base = len(tokens)
    warnings: list[str] = []

    for tid in sorted(added):
        content, special = added[tid]
        if tid < n_base:
            if tokens[tid].decode("utf-8", "replace") != content:
                raise ExpoError(f"{root}: added token {tid} {content!r} clashes with piece {tokens[tid]!r}")
            continue
        if tid >= vocab_size:
            warnings.append(f"added token {content!r} (id {tid}) is beyond the {vocab_size} embedding rows; dropped")
            continue
        while len(tokens) < tid:  # a gap in the ids: fill as llama.cpp's converter does
            tokens.append(f"[PAD{len(tokens)}]".encode())
            scores.append(-1000.0)
            types.append(int(gguf.TokenType.UNUSED))
        tokens.append(content.encode("utf-8"))
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
    while len(tokens) < vocab_size:
        tokens.append(f"[PAD{len(tokens)}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    if len(tokens) > vocab_size:
        raise ExpoError(f"{root}: tokenizer has {len(tokens)} tokens, config.json vocab_size {vocab_size}")

    ids = {t.decode("utf-8", "replace"): i for i, t in enumerate(tokens)}
    special: dict[str, int] = {
        "bos": spm.sentencepiece_tokenizer.bos_id(),
        "eos": spm.sentencepiece_tokenizer.eos_id(),
        "unk": spm.sentencepiece_tokenizer.unk_id(),
    }
    for kind in ("bos", "eos", "unk", "pad"):
        content = _token_content(tok_config.get(f"{kind}_token"))
        if content is not None and content in ids:
            special[kind] = ids[content]
    if END_OF_TURN in ids:
        special["eos"] = special["eot"] = ids[END_OF_TURN]
    special = {k: v for k, v in special.items() if v is not None and 0 <= v < vocab_size}

    template, warning = _chat_template(root, tok_config)
    if warning:
        warnings.append(warning)
    return Vocab(
        tokens=tokens,
        scores=scores,
        types=types,
        special_ids=special,
        add_bos=bool(tok_config.get("add_bos_token", True)),
        add_eos=bool(tok_config.get("add_eos_token", False)),
        chat_template=template,
        warnings=tuple(warnings),
    )
