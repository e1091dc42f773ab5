"""The importance matrix, collected in process exactly as llama.cpp's ``llama-imatrix`` collects it.

``tools/imatrix/imatrix.cpp``: the text is tokenized once (BOS first where the vocab adds one)
and cut into whole chunks of ``n_ctx`` tokens, each decoded from an empty KV cache with its first
token replaced by BOS, every position asking for logits (so the last layer runs on every token).
For every matrix multiplication by a ``blk.*`` weight over at least 16 tokens of F32 input, the
squares of the input activations are added up per input column and the tokens counted. We get
those inputs through ``llama_context_params.cb_eval``, the scheduler's eval callback, reading
ggml's tensor struct and copying the data with ``ggml_backend_tensor_get`` (so offloaded layers
work too). The running perplexity is llama-imatrix's: the second half of each chunk scored.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from .._data import calibration_file
from .._units import plural
from ..errors import ExpoError
from ..gguf_file.header import check_header
from ..gguf_file.imatrix import Imatrix, ImatrixInput, write_imatrix
from ..progress import SILENT, Progress
from ..runtime.loader import load_llama_model
from ..runtime.log import show_llama_log
from ..runtime.options import RunOptions
from .divergence import log_softmax, read_vocab
from .perplexity import make_chunks, tokenize

MIN_TOKENS = 16  # llama-imatrix ignores smaller batches
GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64
GGML_TYPE_F32 = 0


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml.h), as far as we read it."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def _ggml_base() -> ctypes.CDLL:
    libdir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (libdir / name).exists():
            lib = ctypes.CDLL(str(libdir / name))
            break
    else:
        raise ExpoError(f"libggml-base not found in {libdir}: the importance matrix needs llama-cpp-python's ggml")
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.POINTER(GgmlTensor)]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    size = ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [ctypes.POINTER(GgmlTensor), ctypes.c_void_p, size, size]
    return lib


def _weight_name(raw: bytes) -> str:
    """llama-imatrix's ``filter_tensor_name``: ``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight``."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


class Collector:
    """The eval callback: sums of squared inputs per column for every ``blk.*`` matrix product."""

    def __init__(self) -> None:
        self.lib = _ggml_base()
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self._ops: dict[int, bytes] = {}
        self._buf = np.empty(0, np.uint8)
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._call)
        self.error: BaseException | None = None

    def _op(self, op: int) -> bytes:
        if op not in self._ops:
            self._ops[op] = self.lib.ggml_op_name(op) or b""
        return self._ops[op]

    def _call(self, t_addr: int, ask: bool, user_data: int) -> bool:
        if self.error is not None:  # Ctrl+C or a failure: stop at the next node, not the chunk's end
            return ask  # "we want this node", then False after it: the scheduler stops computing
        try:
            t = ctypes.cast(t_addr, ctypes.POINTER(GgmlTensor)).contents
            if ask:
                op = self._op(t.op)
                if op == b"MUL_MAT_ID":
                    raise ExpoError("a mixture-of-experts model: the importance matrix supports dense models only")
                if op != b"MUL_MAT":
                    return False
                src0, src1 = t.src[0].contents, t.src[1].contents
                return src1.ne[1] >= MIN_TOKENS and src1.type == GGML_TYPE_F32 and src0.name.startswith(b"blk.")
            self._collect(t.src[0].contents, t.src[1].contents)
            return True
        except BaseException as e:  # never raise through C; the decode loop re-raises it
            self.error = e
            return False

    def _collect(self, src0: GgmlTensor, src1: GgmlTensor) -> None:
        name = _weight_name(src0.name)
        nbytes = self.lib.ggml_nbytes(ctypes.byref(src1))
        if self._buf.size < nbytes:
            self._buf = np.empty(nbytes, np.uint8)
        self.lib.ggml_backend_tensor_get(ctypes.byref(src1), self._buf.ctypes.data, 0, nbytes)
        ne = [int(src1.ne[i]) for i in range(4)]
        nb = [int(src1.nb[i]) for i in range(4)]
        x = np.lib.stride_tricks.as_strided(self._buf.view(np.float32), shape=ne[::-1], strides=nb[::-1])
        n_mat = int(src0.ne[2] * src0.ne[3])
        acc = self.sums.get(name)
        if acc is None:
            acc = self.sums[name] = np.zeros((n_mat, ne[0]), np.float32)
            self.counts[name] = 0
        elif acc.shape != (n_mat, ne[0]):
            raise ExpoError(f"{name}: inconsistent input size {ne[0]} x {n_mat}, had {acc.shape[1]} x {acc.shape[0]}")
        sq = np.einsum("abij,abij->abj", x, x, dtype=np.float32)  # (ne3, ne2, ne0): summed over tokens
        for i3 in range(ne[3]):
            for i2 in range(ne[2]):
                acc[(i3 % src0.ne[3]) * src0.ne[2] + (i2 % src0.ne[2])] += sq[i3, i2]
        if not np.isfinite(acc).all():
            raise ExpoError(f"non-finite activations in {name}: the model or its file is damaged")
        self.counts[name] += ne[1] * ne[2] * ne[3] // n_mat


@dataclass(frozen=True)
class ImatrixOptions:
    """How to run the model (``run.n_ctx`` is the chunk length) and how many chunks to use."""

    run: RunOptions = RunOptions(n_ctx=512)
    chunks: int | None = None  # None: every whole chunk of the text
    dataset: str = ""  # the name written into imatrix.datasets (llama-imatrix writes the path given)


@dataclass(frozen=True)
class ImatrixResult:
    imatrix: Imatrix
    tokens: int
    seconds: float
    ppl: float  # the running perplexity over the second halves, as llama-imatrix prints it

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@contextlib.contextmanager
def _interrupts_as_flag(collector: Collector) -> Iterator[None]:
    """Ctrl+C and SIGTERM only set a flag while llama.cpp computes: Python runs a signal handler at
    any bytecode of the eval callback, and an exception raised there (even before its first line)
    is lost by ctypes. The callback sees the flag and stops the graph; the loop then raises."""

    def flag(signum: int, frame: object) -> None:
        collector.error = KeyboardInterrupt()

    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            if signal.getsignal(sig) not in (signal.SIG_IGN, None):
                saved[sig] = signal.signal(sig, flag)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _context(path: Path, opts: ImatrixOptions, collector: Collector) -> Iterator[llama_cpp.llama_context_p]:
    run = opts.run.resolved()
    model = load_llama_model(path, run.gpu_layers)
    try:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = run.n_ctx
        cparams.n_ubatch = min(run.n_ctx, 512)  # llama-imatrix's default micro-batch
        cparams.n_threads = cparams.n_threads_batch = run.threads
        cparams.cb_eval = collector.callback
        cparams.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise ExpoError(f"llama.cpp could not create a {run.n_ctx}-token context for {path}")
        try:
            yield ctx
        finally:
            llama_cpp.llama_free(ctx)
    finally:
        llama_cpp.llama_model_free(model)


def collect_imatrix(path: Path, text: bytes, opts: ImatrixOptions, progress: Progress = SILENT) -> ImatrixResult:
    """The importance matrix of ``path`` over ``text``; nothing is written (see ``write_imatrix``)."""
    path = check_header(path)
    show_llama_log(opts.run.verbose)
    n_ctx = opts.run.n_ctx
    if n_ctx < 2 * MIN_TOKENS:
        raise ExpoError(f"--ctx {n_ctx}: at least {2 * MIN_TOKENS} tokens per chunk")
    vocab = read_vocab(path)
    tokens = tokenize(path, text, vocab.bos)
    if len(tokens) < 2 * n_ctx:  # llama-imatrix's own minimum
        raise ExpoError(
            f"the text is {plural(len(tokens), 'token')}; the importance matrix needs at least {2 * n_ctx} "
            f"at --ctx {n_ctx}"
        )
    chunks = make_chunks(tokens, n_ctx, opts.chunks, vocab.bos)
    collector = Collector()
    first = n_ctx // 2
    nll, count = 0.0, 0
    t0 = time.perf_counter()
    progress.task(f"imatrix over {plural(len(chunks), 'chunk')} of {n_ctx}", len(chunks), unit="chunks")
    with _interrupts_as_flag(collector), _context(path, opts, collector) as ctx:
        n_vocab = vocab.n_vocab
        memory = llama_cpp.llama_get_memory(ctx)
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        try:
            for i in range(n_ctx):
                batch.seq_id[i][0] = 0
            np.ctypeslib.as_array(batch.n_seq_id, shape=(n_ctx,))[:] = 1
            np.ctypeslib.as_array(batch.pos, shape=(n_ctx,))[:] = np.arange(n_ctx)
            np.ctypeslib.as_array(batch.logits, shape=(n_ctx,))[:] = 1  # all: the last layer on every token
            for k, chunk in enumerate(chunks):
                llama_cpp.llama_memory_clear(memory, True)
                np.ctypeslib.as_array(batch.token, shape=(n_ctx,))[:] = chunk
                batch.n_tokens = n_ctx
                rc = llama_cpp.llama_decode(ctx, batch)
                if collector.error is not None:
                    raise collector.error
                if rc != 0:
                    raise ExpoError(f"llama_decode failed ({rc}) on chunk {k + 1}", exit_code=1)
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n_ctx, n_vocab))
                logp = log_softmax(logits[first : n_ctx - 1])
                nll -= float(logp[np.arange(len(logp)), chunk[first + 1 :]].sum())
                count += len(logp)
                progress.advance(1)
                elapsed = time.perf_counter() - t0
                progress.task(
                    f"imatrix {(k + 1) * n_ctx / elapsed:,.0f} tok/s, PPL {math.exp(nll / count):.2f}", len(chunks)
                )
        finally:
            llama_cpp.llama_batch_free(batch)
    seconds = time.perf_counter() - t0
    im = Imatrix(
        sums=collector.sums,
        counts={n: np.array([c], np.int64) for n, c in collector.counts.items()},
        datasets=[opts.dataset] if opts.dataset else [],
        chunk_count=len(chunks),
        chunk_size=n_ctx,
    )
    return ImatrixResult(im, len(chunks) * n_ctx, seconds, math.exp(nll / count))


def read_text(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ExpoError(f"cannot read the text {path}: {e.strerror or e}") from None


def compute_and_keep(
    model: Path, keep: Path, calibration: Path | None, opts: ImatrixOptions, progress: Progress = SILENT
) -> ImatrixInput:
    """``--imatrix auto``: the importance matrix of ``model`` over the calibration text (the one the
    package ships unless ``calibration``), written to ``keep`` for the next build or quantize."""
    text_path = calibration or calibration_file()
    dataset = str(calibration) if calibration else f"expo-gguf/{text_path.name}"
    result = collect_imatrix(model, read_text(text_path), dataclasses.replace(opts, dataset=dataset), progress)
    write_imatrix(keep, result.imatrix)
    progress.note(
        f"importance matrix: {plural(result.tokens, 'token')} in {result.seconds:.1f}s "
        f"({result.tokens_per_second:,.0f} tok/s, PPL {result.ppl:.2f}) -> {keep.name}"
    )
    return ImatrixInput(result.imatrix, str(keep))
