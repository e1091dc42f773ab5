"""One llama.cpp model per chat session: stream replies, keep the KV cache, fit the context.

The whole history is re-rendered every turn. Because the rendering is a pure function of the
history, turn N's tokens start with turn N-1's, and ``Llama.generate`` reuses that common prefix
of its KV cache: only the new message is evaluated. Loading (GPU layers, context cap) is
``loader``'s; the sampling settings are the chat layer's, read here by attribute.
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import llama_cpp

from ..errors import ExpoError
from .tokens import Messages, PromptFormat, token_piece, tokenize_text

# Turn terminators some vocabularies carry without flagging them end-of-generation.
EXTRA_STOP_TEXTS = ("<|end_of_turn|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>")
MIN_REPLY_TOKENS = 8


def json_grammar(schema: object | None) -> str:
    """A GBNF grammar for any JSON object (``schema`` None) or for JSON matching ``schema``, through
    llama-cpp-python's JSON-schema converter; a schema it cannot convert is one ``ExpoError`` line."""
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    if not isinstance(schema, dict):
        raise ExpoError(f"the JSON schema is a {type(schema).__name__}, not an object")
    try:
        return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise ExpoError(f"the JSON schema cannot be used: {str(e).splitlines()[0][:200] if str(e) else e}") from None


class SamplingSettings(Protocol):
    """What a reply needs to know (``chat.messages.Sampling`` is the one the CLI builds)."""

    temp: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    max_tokens: int  # -1: until end of turn or a full context
    seed: int  # negative or llama.cpp's LLAMA_DEFAULT_SEED: random


@dataclass(frozen=True)
class TurnStats:
    """One reply's figures, from llama.cpp's perf counters and our own clock."""

    prompt_tokens: int  # length of the rendered prompt
    prompt_evaluated: int  # prompt tokens llama.cpp decoded in batches (the rest came from cache)
    prompt_ms: float
    generated: int
    gen_evaluated: int  # llama.cpp's n_eval: the one-token decodes ``gen_ms`` timed
    gen_ms: float
    ttft_s: float
    ctx_used: int
    n_ctx: int
    stop: str  # "eog", "max_tokens", "context", "interrupted"

    @property
    def prompt_tps(self) -> float:
        return self.prompt_evaluated / self.prompt_ms * 1000 if self.prompt_ms > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        # llama.cpp's own count: a reply cut at max_tokens leaves its last token undecoded, one
        # that ends decodes every token before its stop token.
        return self.gen_evaluated / self.gen_ms * 1000 if self.gen_ms > 0 else 0.0

    def line(self) -> str:
        cached = self.prompt_evaluated <= 1 or self.prompt_ms <= 0  # /regen replays one token
        prompt = "cached" if cached else f"{self.prompt_tps:.1f} tok/s"
        return (
            f"ttft {self.ttft_s:.2f}s · prompt {prompt}"
            f" · gen {self.gen_tps:.1f} tok/s · ctx {self.ctx_used}/{self.n_ctx}"
        )


@dataclass(frozen=True)
class ModelInfo:
    """What the start-up banner and ``/show`` print."""

    name: str
    path: Path
    quant: str
    size_bytes: int
    n_ctx: int
    n_ctx_train: int
    n_layers: int
    gpu_layers: int
    notes: tuple[str, ...] = field(default_factory=tuple)  # for the interactive banner
    warnings: tuple[str, ...] = field(default_factory=tuple)  # always shown: a request was not met

    @property
    def device(self) -> str:
        if self.gpu_layers == 0:
            return "CPU only"
        return f"{self.gpu_layers}/{self.n_layers + 1} layers on GPU"


class ChatModel:
    """A loaded model plus everything needed to chat with it; one per session."""

    def __init__(self, llama: llama_cpp.Llama, info: ModelInfo, template: str) -> None:
        self.llama = llama
        self.info = info
        self.vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.stop_ids = self._find_stop_ids()
        self.prompt_format = PromptFormat(self.vocab, template, info.path.name)
        self.last_stats: TurnStats | None = None
        self.last_tokens: list[int] = []  # the last reply's ids, its stop token included (compare)

    def _find_stop_ids(self) -> frozenset[int]:
        """Every end-of-generation id: llama.cpp's eog set, eos, eot, and known turn ends."""
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        ids = {t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)}
        ids |= {t for t in (self.llama.token_eos(), llama_cpp.llama_vocab_eot(self.vocab)) if t >= 0}
        for text in EXTRA_STOP_TEXTS:
            toks = tokenize_text(self.vocab, text.encode(), special=True)
            if len(toks) == 1 and llama_cpp.llama_vocab_is_control(self.vocab, toks[0]):
                ids.add(toks[0])
        return frozenset(ids)

    def piece(self, token: int, special: bool = False) -> bytes:
        """One token's bytes; a control token's are empty unless ``special``."""
        return token_piece(self.vocab, token, special)

    def render(self, messages: Messages) -> str:
        return self.prompt_format.render(messages)

    def tokenize(self, messages: Messages) -> list[int]:
        return self.prompt_format.tokenize(messages)

    def fit(self, messages: Messages, sampling: SamplingSettings) -> tuple[list[Mapping[str, str]], int]:
        """Drop the oldest turns until the prompt leaves room for a reply.

        The system message and the latest message always stay; if those alone leave no room to
        answer, the message is refused. Returns the kept messages and how many were dropped.
        """
        messages = list(messages)
        n_ctx = self.info.n_ctx
        reserve = sampling.max_tokens if sampling.max_tokens > 0 else n_ctx // 4
        budget = n_ctx - min(reserve, n_ctx // 2)
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        rest = messages[len(head) :]
        dropped = 0
        n = len(self.tokenize(head + rest))
        while n > budget and len(rest) > 1:
            rest = rest[1:]
            dropped += 1
            while len(rest) > 1 and rest[0]["role"] != "user":  # keep turns starting with a user
                rest = rest[1:]
                dropped += 1
            n = len(self.tokenize(head + rest))
        if n > n_ctx - MIN_REPLY_TOKENS:
            raise ExpoError(
                f"message too long: the prompt is {n} tokens and the context holds {n_ctx}; shorten it or raise --ctx"
            )
        return head + rest, dropped

    def check_grammar(self, grammar: str) -> None:
        """Refuse a GBNF grammar llama.cpp cannot parse, before it reaches a sampler (which would
        take the null pointer llama.cpp returns for it)."""
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise ExpoError("the grammar cannot be compiled by llama.cpp (--verbose shows its log)")
        llama_cpp.llama_sampler_free(sampler)

    def stream(self, messages: Messages, sampling: SamplingSettings, grammar: str | None = None) -> Iterator[str]:
        """Yield the reply's text as it is generated; ``last_stats`` is set when it ends.
        ``grammar`` (GBNF, checked with ``check_grammar``) constrains what may be sampled.

        Stops on any stop id, ``max_tokens`` or a full context. Closing the iterator early
        (Ctrl+C in the REPL) keeps the KV cache consistent: the next prompt starts with this one.
        """
        llama, ctx = self.llama, self.llama.ctx
        prompt = self.tokenize(messages)
        n_ctx = self.info.n_ctx
        llama.set_seed(sampling.seed if sampling.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED)
        llama_cpp.llama_perf_context_reset(ctx)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        start, ttft, generated, stop, leading = time.perf_counter(), 0.0, 0, "interrupted", True
        self.last_tokens = []
        try:
            tokens = llama.generate(
                prompt,
                temp=sampling.temp,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=sampling.min_p,
                repeat_penalty=sampling.repeat_penalty,
                grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
            )
            for token in tokens:
                self.last_tokens.append(token)
                if token in self.stop_ids:
                    stop = "eog"
                    break
                generated += 1
                if not ttft:
                    ttft = time.perf_counter() - start
                text = decoder.decode(self.piece(token))
                if leading:  # templates end on "Assistant:"; the reply's first space is layout
                    text = text.lstrip()
                    leading = not text
                if text:
                    yield text
                if 0 < sampling.max_tokens <= generated:
                    stop = "max_tokens"
                    break
                if len(prompt) + generated >= n_ctx:
                    stop = "context"
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        except RuntimeError as e:  # llama_decode failures surface as RuntimeError
            raise ExpoError(f"generation failed: {e}") from None
        finally:
            perf = llama_cpp.llama_perf_context(ctx)
            self.last_stats = TurnStats(
                prompt_tokens=len(prompt),
                prompt_evaluated=perf.n_p_eval,
                prompt_ms=perf.t_p_eval_ms,
                generated=generated,
                gen_evaluated=perf.n_eval,
                gen_ms=perf.t_eval_ms,
                ttft_s=ttft,
                ctx_used=llama.n_tokens,
                n_ctx=n_ctx,
                stop=stop,
            )

    def close(self) -> None:
        self.llama.close()
