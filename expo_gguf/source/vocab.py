"""The tokenizer as llama.cpp needs it: pieces, added tokens, special ids, end of generation, template.

Two tokenizer kinds: SentencePiece ``tokenizer.model`` (Mistral, Llama 2; read by gguf-py) and
byte-level BPE ``tokenizer.json`` (Llama 3; see vocab_bpe). Added tokens we type ourselves, as
llama.cpp's converter does: special ones (OpenChat's ``<|end_of_turn|>``, Llama 3's
``<|eot_id|>``) must be CONTROL for llama.cpp to treat them as special and never print them.
Every end-of-generation id the RLHF checkpoint names (tokenizer_config.json's eos and
generation_config.json's ``eos_token_id``, which may be a list) goes into the GGUF keys llama.cpp
reads as end of generation: eos, eot, eom.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .._units import plural
from ..errors import ExpoError
from .chat_template import END_OF_TURN, chat_template
from .checkpoint import read_json
from .hub import display_name
from .vocab_bpe import load_bpe

log = logging.getLogger("expo_gguf")

# Token texts llama.cpp itself treats as end of generation (llama-vocab.cpp, load): an id among
# these needs no GGUF key to stop generation (test_llama_family checks each against llama.cpp).
LLAMA_CPP_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "<|end_of_text|>",
        "<eos>",
    }
)
CONTROL, USER_DEFINED, UNUSED, NORMAL = (
    int(gguf.TokenType.CONTROL),
    int(gguf.TokenType.USER_DEFINED),
    int(gguf.TokenType.UNUSED),
    int(gguf.TokenType.NORMAL),
)


@dataclass(frozen=True)
class Vocab:
    """Everything the GGUF's ``tokenizer.*`` keys hold."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str  # tokenizer.ggml.pre: which of llama.cpp's pre-tokenizers
    tokens: list[bytes] = field(repr=False)
    scores: list[float] | None = field(repr=False)
    types: list[int] = field(repr=False)
    merges: list[str] = field(repr=False)
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str
    warnings: tuple[str, ...] = ()

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.merges:
            w.add_token_merges(self.merges)
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


def looks_special(text: str) -> bool:
    """Added tokens some checkpoints forget to mark special; llama.cpp's converter types them CONTROL too."""
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


def _added_tokens(root: Path, tok_config: dict) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) from added_tokens.json and tokenizer_config.json's decoder."""
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
    return added


@dataclass
class _Pieces:
    """The vocabulary being assembled: the tokenizer's own pieces, then added tokens and padding."""

    model: str
    pre: str
    tokens: list[bytes]
    scores: list[float] | None
    types: list[int]
    merges: list[str]
    special: dict[str, int]  # ids the tokenizer model itself names
    add_bos: bool | None  # what the tokenizer file itself says; None: tokenizer_config.json decides
    add_eos: bool | None = None

    def append(self, text: bytes, ttype: int) -> None:
        self.tokens.append(text)
        self.types.append(ttype)
        if self.scores is not None:
            self.scores.append(-1000.0)


def _sentencepiece(root: Path) -> _Pieces:
    try:  # after our own checks of the JSON files, which gguf-py reads again less carefully
        spm = gguf.SentencePieceVocab(root)
    except Exception as e:  # sentencepiece raises plain RuntimeError/OSError on a bad file
        raise ExpoError(f"{root}: tokenizer files cannot be read: {e}") from None
    pieces = _Pieces("llama", "default", [], [], [], [], {}, None)
    for text, score, ttype in spm.sentencepiece_tokens():
        pieces.tokens.append(text)
        pieces.scores.append(score)  # type: ignore[union-attr]
        pieces.types.append(int(ttype))
    sp = spm.sentencepiece_tokenizer
    pieces.special = {k: v for k, v in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())) if v >= 0}
    return pieces


def _bpe(root: Path, added: dict[int, tuple[str, bool]]) -> _Pieces:
    base = load_bpe(root)
    for tid, entry in base.added.items():
        added.setdefault(tid, entry)  # tokenizer_config.json's decoder, read first, wins
    return _Pieces(
        "gpt2",
        base.pre,
        [t.encode("utf-8") for t in base.tokens],
        None,
        [NORMAL] * len(base.tokens),
        base.merges,
        {},
        base.add_bos,
        base.add_eos,
    )


def _place_added(
    p: _Pieces, added: dict[int, tuple[str, bool]], vocab_size: int, root: Path, warnings: list[str]
) -> None:
    n_base = len(p.tokens)
    for tid in sorted(added):
        content, special = added[tid]
        ttype = CONTROL if special or looks_special(content) else USER_DEFINED
        if tid < n_base:
            if p.tokens[tid].decode("utf-8", "replace") != content:
                raise ExpoError(f"{root}: added token {tid} {content!r} clashes with piece {p.tokens[tid]!r}")
            if p.types[tid] == NORMAL:
                p.types[tid] = ttype
            continue
        if tid >= vocab_size:
            warnings.append(f"added token {content!r} (id {tid}) is beyond the {vocab_size} embedding rows; dropped")
            continue
        while len(p.tokens) < tid:  # a gap in the ids: fill as llama.cpp's converter does
            p.append(f"[PAD{len(p.tokens)}]".encode(), UNUSED)
        p.append(content.encode("utf-8"), ttype)
    while len(p.tokens) < vocab_size:
        p.append(f"[PAD{len(p.tokens)}]".encode(), UNUSED)
    if len(p.tokens) > vocab_size:
        raise ExpoError(f"{root}: tokenizer has {plural(len(p.tokens), 'token')}, config.json vocab_size {vocab_size}")


def _eos_ids(root: Path, tok_config: dict, ids: dict[str, int], vocab_size: int, warnings: list[str]) -> list[int]:
    """Every id the checkpoint says ends generation: tokenizer_config's eos first, then the
    generation config's ``eos_token_id`` (an int or a list)."""
    out = []
    content = _token_content(tok_config.get("eos_token"))
    if content is not None:
        if content in ids:
            out.append(ids[content])
        else:
            warnings.append(f"eos_token {content!r} of tokenizer_config.json is not in the vocabulary; ignored")
    where = root / "generation_config.json"
    gen = read_json(where, "generation config", required=False).get("eos_token_id")
    for tid in gen if isinstance(gen, list) else [] if gen is None else [gen]:
        tid = _token_id(tid, where)
        if tid < vocab_size:
            out.append(tid)
        else:
            warnings.append(
                f"eos_token_id {tid} of generation_config.json is beyond the {vocab_size} embedding rows; ignored"
            )
    return list(dict.fromkeys(out))


def _end_of_generation(
    eog: list[int], text: dict[int, str], special: dict[str, int], root: Path, warnings: list[str]
) -> None:
    """Give eot and eom to the end ids that are not eos: those llama.cpp does not know by their
    text first (nothing else would stop at them), then the ones it knows (older llama.cpp builds,
    as in Ollama or LM Studio, know fewer texts)."""
    rest = [t for t in eog if t not in special.values()]
    for t in sorted(rest, key=lambda t: text[t] in LLAMA_CPP_EOG_TEXTS):  # stable: unknown texts first
        if text[t] == "<|eom_id|>" and "eom" not in special:
            special["eom"] = t
            continue
        slot = next((k for k in ("eot", "eom") if k not in special), None)
        if slot:
            special[slot] = t
        elif text[t] not in LLAMA_CPP_EOG_TEXTS:
            warnings.append(
                f"token {text[t]!r} (id {t}) ends generation in {display_name(root)}, but a GGUF marks at "
                "most three (eos, eot, eom): llama.cpp will not stop at it"
            )


def _special_ids(root: Path, tok_config: dict, p: _Pieces, vocab_size: int, warnings: list[str]) -> dict[str, int]:
    ids = {t.decode("utf-8", "replace"): i for i, t in enumerate(p.tokens)}
    special = dict(p.special)
    for kind in ("bos", "unk", "pad"):
        content = _token_content(tok_config.get(f"{kind}_token"))
        if content is not None and content in ids:
            special[kind] = ids[content]
    eog = _eos_ids(root, tok_config, ids, vocab_size, warnings)
    if END_OF_TURN in ids:  # OpenChat: the end of a turn is the end of generation
        eog = list(dict.fromkeys([ids[END_OF_TURN], *eog]))
        special["eot"] = ids[END_OF_TURN]
    if eog:
        special["eos"] = eog[0]
    ends = {k: special.pop(k) for k in ("eos", "eot", "eom") if k in special}
    _end_of_generation(eog, {t: p.tokens[t].decode("utf-8", "replace") for t in eog}, ends, root, warnings)
    special |= ends
    return {k: v for k, v in special.items() if 0 <= v < vocab_size}


def load_vocab(root: Path, vocab_size: int, template_file: Path | None = None, fallback: str | None = None) -> Vocab:
    """The RLHF checkpoint's tokenizer as exactly ``vocab_size`` tokens (the embedding rows)."""
    tok_config = read_json(root / "tokenizer_config.json", "tokenizer config", required=False)
    added = _added_tokens(root, tok_config)
    if (root / "tokenizer.model").is_file():
        pieces = _sentencepiece(root)
    elif (root / "tokenizer.json").is_file():
        pieces = _bpe(root, added)
    else:
        raise ExpoError(f"{root}: no tokenizer (tokenizer.model or tokenizer.json)")
    warnings: list[str] = []
    _place_added(pieces, added, vocab_size, root, warnings)
    special = _special_ids(root, tok_config, pieces, vocab_size, warnings)
    template, warning = chat_template(
        root, tok_config, template_file, any(t == END_OF_TURN.encode() for t in pieces.tokens), fallback
    )
    if warning:
        warnings.append(warning)
    # a tokenizer.json's post-processor decides BOS/EOS where it says (as transformers and gguf-py read it)
    add_bos = pieces.add_bos if pieces.add_bos is not None else tok_config.get("add_bos_token")
    add_eos = pieces.add_eos if pieces.add_eos is not None else tok_config.get("add_eos_token")
    return Vocab(
        model=pieces.model,
        pre=pieces.pre,
        tokens=pieces.tokens,
        scores=pieces.scores,
        types=pieces.types,
        merges=pieces.merges,
        special_ids=special,
        add_bos=pieces.model == "llama" if add_bos is None else bool(add_bos),
        add_eos=bool(add_eos),
        chat_template=template,
        warnings=tuple(warnings),
    )
