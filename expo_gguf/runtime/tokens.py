"""Text to tokens and back, and a model's chat template over its vocabulary.

Only the vocabulary is needed here (no weights), so ``compare`` can measure every prompt of every
model from a vocab-only load before generating anything. The prompt is rendered from the GGUF's
own ``tokenizer.chat_template`` (never llama-cpp-python's built-in "openchat" format, which
renders a malformed prompt).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ..errors import ExpoError

Messages = Sequence[Mapping[str, str]]  # role/content pairs: the chat layer's Message


def token_piece(vocab: llama_cpp.llama_vocab_p, token: int, special: bool = False) -> bytes:
    """Bytes of one token; control tokens give b"" unless ``special``."""
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    if n < 0:  # piece longer than the buffer: llama.cpp returns minus the size it needs
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:n]


def tokenize_text(vocab: llama_cpp.llama_vocab_p, text: bytes, special: bool) -> list[int]:
    """llama.cpp's tokenizer without BOS; ``special`` parses control-token texts as those tokens."""
    buf = (llama_cpp.llama_token * (len(text) + 2))()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), False, special)
    if n < 0:  # more tokens than the buffer: llama.cpp returns minus the count
        buf = (llama_cpp.llama_token * -n)()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), False, special)
    return list(buf[:n])


class PromptFormat:
    """A model's chat template over its vocabulary: needs no weights, so ``compare`` can measure
    every prompt of every model (from a vocab-only load) before generating anything."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, template: str, source: str) -> None:
        self.vocab, self.source, self.template = vocab, source, template
        bos, eos = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)
        self._bos = bos
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self._formatter = Jinja2ChatFormatter(
            template,
            eos_token=self._text(eos) if eos >= 0 else "",
            bos_token=self._text(bos) if bos >= 0 else "",
            add_generation_prompt=True,
        )

    def _text(self, token: int) -> str:
        return token_piece(self.vocab, token, special=True).decode("utf-8", errors="replace")

    def render(self, messages: Messages) -> str:
        """The prompt text, exactly as the model's template lays it out."""
        try:
            return self._formatter(messages=list(messages)).prompt
        except Exception as e:  # jinja raises a zoo of types; a template bug is the user's GGUF
            raise ExpoError(f"the chat template of {self.source} failed: {e}") from None

    def tokenize(self, messages: Messages) -> list[int]:
        """Prompt tokens; BOS only where the vocab wants one and the template did not write it."""
        toks = tokenize_text(self.vocab, self.render(messages).encode(), special=True)
        if self._add_bos and self._bos >= 0 and (not toks or toks[0] != self._bos):
            toks.insert(0, self._bos)
        return toks
