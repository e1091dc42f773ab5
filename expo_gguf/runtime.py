"""One llama.cpp model per chat session: render prompts, stream replies, keep the KV cache.

The prompt is rendered from the GGUF's own ``tokenizer.chat_template`` (never
llama-cpp-python's built-in "openchat" format, which renders a malformed prompt) and the whole
history is re-rendered every turn. Because the rendering is a pure function of the history,
turn N's tokens start with turn N-1's, and ``Llama.generate`` reuses that common prefix of its
KV cache: only the new message is evaluated. Loading (GPU layers, context cap) is ``loader``'s.
"""

from __future__ import annotations

import codecs
import ctypes
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from .errors import ExpoError

Message = dict[str, str]

# Turn terminators some vocabularies carry without flagging them end-of-generation.
EXTRA_STOP_TEXTS = ("<|end_of_turn|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>")
MIN_REPLY_TOKENS = 8
CUDA_HINT = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python --force-reinstall --no-cache-dir'
)
_show_llama_log = False


@llama_cpp.llama_log_callback
def _llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Quiet by default: llama-cpp-python's own filter maps ggml's WARN level to ERROR and
    lets warnings through; --verbose shows everything."""
    if _show_llama_log:
        sys.stderr.write(text.decode("utf-8", errors="replace"))


def set_llama_log(verbose: bool) -> None:
    global _show_llama_log
    _show_llama_log = verbose
    llama_cpp.llama_log_set(_llama_log, ctypes.c_void_p(0))

@dataclass
class Sampling:
    """Sampling settings, mutable so ``/set`` in the REPL changes the next reply.

    Defaults are llama.cpp's; ``max_tokens`` -1 means until end of turn or a full context.
    """

    temp: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int = -1
    seed: int = llama_cpp.LLAMA_DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.seed < 0:  # as llama.cpp's --seed -1: a random seed
            self.seed = llama_cpp.LLAMA_DEFAULT_SEED
        checks = {
            "temp": self.temp >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= 0,
            "min_p": 0 <= self.min_p <= 1,
            "repeat_penalty": self.repeat_penalty > 0,
            "max_tokens": self.max_tokens == -1 or self.max_tokens > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ExpoError(f"invalid sampling setting: {', '.join(bad)}")


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


def resolve_gpu_layers(value: str | int, supports_gpu: bool | None = None) -> tuple[int, str | None]:
    """``-ngl`` to a layer count for llama.cpp, plus a warning when the request cannot be met.

    A CPU-only build silently ignores offload requests, so say so once and how to fix it.
    """
    if supports_gpu is None:
        supports_gpu = bool(llama_cpp.llama_supports_gpu_offload())
    text = str(value).strip().lower()
    if text == "auto":
        return (-1 if supports_gpu else 0), None
    try:
        n = int(text)
    except ValueError:
        raise ExpoError(f"-ngl takes a layer count, -1 (all) or auto, not {value!r}") from None
    if n < -1:
        raise ExpoError(f"-ngl takes a layer count, -1 (all) or auto, not {value!r}")
    if n != 0 and not supports_gpu:
        return 0, f"this llama-cpp-python build has no GPU support, -ngl {n} ignored; for CUDA: {CUDA_HINT}"
    return n, None



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
        self.vocab, self.source = vocab, source
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

    def render(self, messages: list[Message]) -> str:
        """The prompt text, exactly as the model's template lays it out."""
        try:
            return self._formatter(messages=messages).prompt
        except Exception as e:  # jinja raises a zoo of types; a template bug is the user's GGUF
            raise ExpoError(f"the chat template of {self.source} failed: {e}") from None

    def tokenize(self, messages: list[Message]) -> list[int]:
        """Prompt tokens; BOS only where the vocab wants one and the template did not write it."""
        toks = tokenize_text(self.vocab, self.render(messages).encode(), special=True)
        if self._add_bos and self._bos >= 0 and (not toks or toks[0] != self._bos):
            toks.insert(0, self._bos)
        return toks


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

    def _piece(self, token: int, special: bool = False) -> bytes:
        return token_piece(self.vocab, token, special)

    def render(self, messages: list[Message]) -> str:
        return self.prompt_format.render(messages)

    def tokenize(self, messages: list[Message]) -> list[int]:
        return self.prompt_format.tokenize(messages)

    def fit(self, messages: list[Message], sampling: Sampling) -> tuple[list[Message], int]:
        """Drop the oldest turns until the prompt leaves room for a reply.

        The system message and the latest message always stay; if those alone leave no room to
        answer, the message is refused. Returns the kept messages and how many were dropped.
        """
        n_ctx = self.info.n_ctx
        reserve = sampling.max_tokens if sampling.max_tokens > 0 else n_ctx // 4
        budget = n_ctx - min(reserve, n_ctx // 2)
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        rest = messages[len(head):]
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
                f"message too long: the prompt is {n} tokens and the context holds {n_ctx};"
                " shorten it or raise --ctx"
            )
        return head + rest, dropped

    def stream(self, messages: list[Message], sampling: Sampling) -> Iterator[str]:
        """Yield the reply's text as it is generated; ``last_stats`` is set when it ends.

        Stops on any stop id, ``max_tokens`` or a full context. Closing the iterator early
        (Ctrl+C in the REPL) keeps the KV cache consistent: the next prompt starts with this one.
        """
        llama, ctx = self.llama, self.llama.ctx
        prompt = self.tokenize(messages)
        n_ctx = self.info.n_ctx
        llama.set_seed(sampling.seed)
        llama_cpp.llama_perf_context_reset(ctx)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        start, ttft, generated, stop, leading = time.perf_counter(), 0.0, 0, "interrupted", True
        self.last_tokens = []
        try:
            tokens = llama.generate(
                prompt, temp=sampling.temp, top_p=sampling.top_p, top_k=sampling.top_k,
                min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty,
            )
            for token in tokens:
                self.last_tokens.append(token)
                if token in self.stop_ids:
                    stop = "eog"
                    break
                generated += 1
                if not ttft:
                    ttft = time.perf_counter() - start
                text = decoder.decode(self._piece(token))
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
                prompt_tokens=len(prompt), prompt_evaluated=perf.n_p_eval,
                prompt_ms=perf.t_p_eval_ms, generated=generated, gen_evaluated=perf.n_eval,
                gen_ms=perf.t_eval_ms,
                ttft_s=ttft, ctx_used=llama.n_tokens, n_ctx=n_ctx, stop=stop,
            )

    def close(self) -> None:
        self.llama.close()
