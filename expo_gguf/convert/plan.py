"""The build plan: everything decided and checked from headers and JSON, before a byte is written.

``make_plan`` reads both checkpoints' headers, config and tokenizer, works out every tensor's
GGUF name, type and size in every output, and checks the pair against each other. Every problem it
finds is reported at once; ``--dry-run`` prints the plan and the build only executes it.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._fs import unwritable_reason
from .._units import plural
from ..errors import ExpoError
from ..gguf_file.imatrix import ImatrixInput, load_imatrix
from ..quant.llama import check_imatrix
from ..quant.types import INTERMEDIATE, QUANTS, refuse_without_imatrix
from ..source import remote
from ..source.checkpoint import Checkpoint, load_checkpoint
from ..source.hub import require_pair_cached
from ..source.reader import BLOCK_BYTES, DEPTH
from ..source.vocab import Vocab, load_vocab
from .mapping import (
    HParams,
    check_hparams,
    describe_rope,
    expected_shapes,
    hparams_from_config,
    rope_freqs,
    rope_heads,
    tensor_names,
)
from .metadata import file_sizer, llama_cpp_types
from .outputs import (
    Output,
    by_llama_cpp,
    default_name,
    imatrix_path,
    mix_estimate,
    model_names,
    output_path,
    streamed_types,
)
from .request import MATHS, BuildRequest, ExtraTensor, TensorJob, check_request

# the names a build's callers import from here; they live beside the plan, in request and outputs
__all__ = [
    "MATHS",
    "BuildRequest",
    "ExtraTensor",
    "Output",
    "Plan",
    "TensorJob",
    "by_llama_cpp",
    "check_ready",
    "default_name",
    "imatrix_path",
    "make_plan",
    "model_names",
    "output_path",
]

CHUNK_ELEMS = 1 << 18  # float32 values per work item: 1 MiB, sized for a core's L2 cache


@dataclass(frozen=True)
class Plan:
    request: BuildRequest
    name: str
    sft: Checkpoint
    rlhf: Checkpoint
    hparams: HParams
    vocab: Vocab
    tensors: tuple[TensorJob, ...]
    extra: tuple[ExtraTensor, ...]
    streamed: tuple[Output, ...]
    derived: tuple[Output, ...]
    warnings: tuple[str, ...]
    disk_free: int
    existing: tuple[Path, ...] = ()  # outputs already there: replaced with --force, else refused
    unwritable: str | None = None  # why nothing can be written into the output folder

    @property
    def outputs(self) -> tuple[Output, ...]:
        return self.streamed + self.derived

    # issue 15: per alpha, the importance matrix the quantizer gets (a given file, or an earlier
    # --imatrix auto one reused), or where --imatrix auto keeps the one it computes
    imatrix: dict[float, ImatrixInput] = dataclasses.field(default_factory=dict)
    imatrix_keep: dict[float, Path] = dataclasses.field(default_factory=dict)
    overridden: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # --tensor-type pattern -> tensors

    @property
    def math(self) -> str:
        """``expo.math`` in every output: bf16, f32, or mixed (bf16 for some tensors only)."""
        maths = {j.math for j in self.tensors}
        return maths.pop() if len(maths) == 1 else "mixed"

    @property
    def input_bytes(self) -> int:
        return self.sft.nbytes + self.rlhf.nbytes

    @property
    def disk_needed(self) -> int:
        return sum(o.nbytes for o in self.streamed + self.derived)

    @property
    def peak_ram(self) -> int:
        """Read blocks (a pool per checkpoint), worker buffers (two inputs and every output per
        chunk in flight) plus vocab and Python; remote shards add their stream windows."""
        per_chunk = CHUNK_ELEMS * 4 * (1 + min(len(self.request.alphas), 2) + len(self.streamed))
        blocks = 2 * DEPTH * BLOCK_BYTES
        streams = len(self.sft.remote) + len(self.rlhf.remote)  # remote shards: a window each, two ahead
        window = 2 * (remote.AHEAD + remote.BLOCK) + streams * (remote.BEHIND + remote.BLOCK) if streams else 0
        return blocks + self.request.threads * 3 * per_chunk + len(self.vocab.tokens) * 64 + 150 * 2**20 + window


def _check_pair(sft: Checkpoint, rlhf: Checkpoint) -> HParams:
    problems: list[str] = []
    hp_s = hparams_from_config(sft.config, sft.label)
    hp_r = hparams_from_config(rlhf.config, rlhf.label)
    for field in hp_r.__dataclass_fields__:
        if getattr(hp_s, field) != getattr(hp_r, field):
            s, r = (
                (describe_rope(hp_s), describe_rope(hp_r))
                if field == "rope_scaling"
                else (getattr(hp_s, field), getattr(hp_r, field))
            )
            problems.append(f"{field} {s} (SFT) vs {r} (RLHF)")
    only_r = sorted(set(rlhf.tensors) - set(sft.tensors))
    only_s = sorted(set(sft.tensors) - set(rlhf.tensors))
    if only_r:
        problems.append(f"{plural(len(only_r), 'tensor')} only in RLHF (first {only_r[0]})")
    if only_s:
        problems.append(f"{plural(len(only_s), 'tensor')} only in SFT (first {only_s[0]})")
    for name in sorted(set(rlhf.tensors) & set(sft.tensors)):
        if rlhf.tensors[name].shape != sft.tensors[name].shape:
            problems.append(
                f"{name} shape {list(sft.tensors[name].shape)} (SFT) vs {list(rlhf.tensors[name].shape)} (RLHF)"
            )
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ExpoError(f"SFT and RLHF checkpoints do not match: {'; '.join(problems[:4])}{more}")
    return hp_r


def _check_against_config(rlhf: Checkpoint, names: dict[str, str], hp: HParams) -> None:
    """The tensors must be exactly what llama.cpp will look for, in the shapes config.json implies;
    otherwise the build would succeed and llama.cpp refuse the file."""
    want = expected_shapes(hp)
    have = {names[n]: rlhf.tensors[n].shape for n in names}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [
        f"{n} is {list(have[n])}, config.json implies {list(want[n])}"
        for n in sorted(set(want) & set(have))
        if have[n] != want[n]
    ]
    problems = (
        ([f"missing {plural(len(missing), 'tensor')} (first {missing[0]})"] if missing else [])
        + ([f"{plural(len(extra), 'unexpected tensor')} (first {extra[0]})"] if extra else [])
        + wrong
    )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ExpoError(f"{rlhf.label}: tensors do not match config.json: {'; '.join(problems[:3])}{more}")


def _chunk_rows(shape: tuple[int, ...], rope_rows: int | None) -> int:
    row = math.prod(shape[1:]) if len(shape) > 1 else max(math.prod(shape), 1)
    rows = max(1, CHUNK_ELEMS // row)
    if rope_rows:  # whole heads, so the permutation stays inside a chunk
        rows = max(rope_rows, rows // rope_rows * rope_rows)
    return rows


def _free_space(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_ready(plan: Plan) -> None:
    """What stops ``plan`` from being executed, though ``--dry-run`` still prints it: an output
    folder that cannot be written, outputs that exist (without ``force``), too little disk."""
    outdir = plan.request.outdir
    if plan.unwritable:
        raise ExpoError(f"cannot write into {outdir}: {plan.unwritable}")
    if plan.existing and not plan.request.force:
        more = " (and more)" if len(plan.existing) > 1 else ""
        raise ExpoError(f"{plan.existing[0]} exists{more}; use --force to overwrite")
    if plan.disk_free < plan.disk_needed:
        raise ExpoError(
            f"not enough disk in {outdir}: the build needs {plan.disk_needed / 1e9:.2f} GB, "
            f"{plan.disk_free / 1e9:.2f} GB free",
            exit_code=1,
        )


def make_plan(req: BuildRequest) -> Plan:
    check_request(req)
    if not req.remote:
        require_pair_cached(req.sft, req.rlhf)
    rlhf = load_checkpoint(req.rlhf, "--rlhf", req.remote)
    sft = load_checkpoint(req.sft, "--sft", req.remote)
    if sft.same_files(rlhf):
        raise ExpoError(f"SFT and RLHF are the same checkpoint ({rlhf.path}): the result would be the RLHF model")
    hp = _check_pair(sft, rlhf)
    check_hparams(hp, rlhf.config, rlhf.label)
    names = tensor_names(list(rlhf.tensors), hp)
    _check_against_config(rlhf, names, hp)
    vocab = load_vocab(rlhf.path, hp.vocab_size, req.chat_template, req.fallback_template)
    order = sorted(names, key=lambda n: (str(rlhf.tensors[n].file), rlhf.tensors[n].offset))
    jobs = []
    for hf_name in order:
        ref = rlhf.tensors[hf_name]
        heads = rope_heads(names[hf_name], hp)
        rope_rows = ref.shape[0] // heads if heads else None
        if heads and ref.shape[0] != heads * hp.head_dim:
            raise ExpoError(f"{hf_name}: {ref.shape[0]} rows do not hold {heads} heads of {hp.head_dim}")
        sft_ref = sft.tensors[hf_name]
        job_math = req.math or ("bf16" if ref.dtype == sft_ref.dtype == "BF16" else "f32")
        jobs.append(
            TensorJob(names[hf_name], ref.shape, ref, sft_ref, rope_rows, _chunk_rows(ref.shape, rope_rows), job_math)
        )
    freqs = rope_freqs(hp)
    extra = (ExtraTensor("rope_freqs.weight", freqs),) if freqs is not None else ()

    name, names = model_names(req, sft, rlhf)
    warnings = list(vocab.warnings)
    streamed: list[Output] = []
    derived: list[Output] = []
    # K-quants start from a float file holding the values exactly: under bf16 maths, BF16 (the values
    # llama.cpp would quantize from the converter's output), which F16 may round
    bf16_values = all(j.math == "bf16" for j in jobs)
    intermediate = QUANTS["bf16"] if bf16_values else INTERMEDIATE
    float_order = ("f32", "bf16", "f16") if bf16_values else ("f32", "f16", "bf16")
    for alpha in req.alphas:
        general = req.name or names[alpha]
        floats: dict[str, Output] = {}
        for quant in [q for q in req.quants if not by_llama_cpp(q, req)]:
            path = output_path(req, names[alpha], quant.label)
            out = Output(quant, alpha, path, 0, streamed_types(quant, jobs, warnings), name=general)
            streamed.append(out)
            floats[quant.name] = out
        kquants = [q for q in req.quants if by_llama_cpp(q, req)]
        if not kquants:
            continue
        # a float file the user asked for doubles as the source, the most precise first
        source = next((floats[n] for n in float_order if n in floats), None)
        if source is None:
            tmp = output_path(req, f".{names[alpha]}", f"{intermediate.label}.intermediate")
            types = streamed_types(intermediate, jobs, [])
            source = Output(intermediate, alpha, tmp, 0, types, temporary=True, name=general)
            streamed.append(source)
        for quant in kquants:
            path = output_path(req, names[alpha], quant.label)
            derived.append(Output(quant, alpha, path, 0, None, source.path, name=general, estimate=True))
    existing = tuple(o.path for o in streamed + derived if o.path.exists() and not o.temporary)
    imatrix, keep, overridden = _imatrix_and_overrides(req, names, jobs, derived, warnings)
    plan = Plan(
        req,
        name,
        sft,
        rlhf,
        hp,
        vocab,
        tuple(jobs),
        extra,
        tuple(streamed),
        tuple(derived),
        tuple(dict.fromkeys(warnings)),
        _free_space(req.outdir),
        existing,
        unwritable_reason(req.outdir),
        imatrix,
        keep,
        overridden,
    )
    return _sized(plan)


def _sized(plan: Plan) -> Plan:
    """Every output with its size: exact for the files the pass writes (their header measured as
    the writer will write it), and for llama.cpp's where its own dry run tells each tensor's type
    and no importance matrix adds its keys; else an estimate (``Output.estimate``)."""
    size = file_sizer(plan)
    streamed = tuple(dataclasses.replace(o, nbytes=size(o, o.types)) for o in plan.streamed)  # type: ignore[arg-type]
    sources = {o.path: o for o in streamed}
    mixes: dict[tuple[str, str], tuple] = {}
    derived = []
    for o in plan.derived:
        source = sources[o.source]  # type: ignore[index]
        key = (o.quant.name, source.quant.name)
        if key not in mixes:
            mixes[key] = llama_cpp_types(plan, source, o.quant) or ()
        types = mixes[key] or mix_estimate(o.quant, plan.tensors, plan.request.overrides)
        imatrix = plan.request.imatrix is not None and (o.quant.imatrix_helps or o.quant.needs_imatrix)
        estimate = not mixes[key] or imatrix
        derived.append(dataclasses.replace(o, nbytes=size(o, types), estimate=estimate))
    return dataclasses.replace(plan, streamed=streamed, derived=tuple(derived))


# --- issue 15: importance matrix and per-tensor overrides -------------------------------------


def _imatrix_and_overrides(
    req: BuildRequest, names: dict[float, str], jobs: list[TensorJob], derived: list[Output], warnings: list[str]
) -> tuple[dict[float, ImatrixInput], dict[float, Path], dict[str, list[str]]]:
    refuse_without_imatrix(req.quants, req.imatrix is not None)
    shapes = {j.gguf_name: tuple(reversed(j.shape)) for j in jobs}
    overridden = req.overrides.matches(list(shapes))
    wants = [o for o in derived if o.quant.imatrix_helps or o.quant.needs_imatrix]
    if req.imatrix is None or not wants:
        if req.imatrix is not None:
            warnings.append(f"--imatrix: none of {', '.join(q.name for q in req.quants)} uses an importance matrix")
        return {}, {}, overridden
    given: dict[float, ImatrixInput] = {}
    keep: dict[float, Path] = {}
    for alpha in dict.fromkeys(o.alpha for o in wants):
        name = names[alpha]
        path = Path(req.imatrix) if req.imatrix != "auto" else imatrix_path(req, name)
        if req.imatrix != "auto" or path.exists():
            given[alpha] = load_imatrix(path)
            check_imatrix(given[alpha].data, shapes, name, any(q.needs_imatrix for q in req.quants))
            if req.imatrix == "auto":
                warnings.append(f"reusing {path} (an earlier --imatrix auto of {name}); delete it to recompute")
        else:
            keep[alpha] = path
    return given, keep, overridden
