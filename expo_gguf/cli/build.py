"""``build``, ``quantize`` and ``presets``: option parsing and printing around the library."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .._units import human_bytes
from ..convert.execute import compiled_kernels, run_build
from ..convert.plan import MATHS, BuildRequest, Plan, check_ready, make_plan
from ..errors import ExpoError
from ..gguf_file.imatrix import ImatrixInput, load_imatrix
from ..gguf_file.modelfile import write_modelfile
from ..quant.llama import TensorOverrides, check_imatrix, parse_overrides
from ..quant.requantize import dry_run_job, imatrix_beside, model_tensors, plan_requantize, run_requantize, size_of
from ..quant.types import parse_quants, quant_help
from ..runtime.options import usable_cores
from ..source.presets import find_preset, load_presets
from ._options import imatrix_options, override_options, threads_option
from ._output import note, progress, warn
from ._output import out as console
from .imatrix import auto_maker, check_auto_options


def print_plan(plan: Plan) -> None:
    r = plan.request
    title = plan.outputs[0].name if len(r.alphas) == 1 and plan.outputs else plan.name  # the model's name at it
    console.print(
        f"[bold]{escape(title)}[/]  alpha={','.join(f'{a:g}' for a in r.alphas)}  ({plan.hparams.architecture}, "
        f"{plan.hparams.block_count} layers, vocab {plan.hparams.vocab_size})"
    )
    for role, ckpt in (("RLHF", plan.rlhf), ("SFT ", plan.sft)):
        where = f"hub, revision {ckpt.revision}" if ckpt.remote else str(ckpt.path)
        if ckpt.revision and not ckpt.remote:
            where += f", revision {ckpt.revision}"
        console.print(f"  {role} {ckpt.label}  ({where})", soft_wrap=True)
    console.print(
        f"  {len(plan.tensors)} tensors, input {human_bytes(plan.input_bytes)} read once, "
        f"{r.threads} threads, peak RAM ~{human_bytes(plan.peak_ram)}"
    )
    console.print(f"  math: {_math_line(plan)}")
    console.print(
        f"  writing into {r.outdir}/" + (f"  [red]cannot: {escape(plan.unwritable)}[/]" if plan.unwritable else "")
    )
    t = Table(box=None, pad_edge=False)
    for col in ("  file", "written by", "size"):
        t.add_column(col, overflow="fold")
    for o in plan.outputs:
        who = "llama.cpp quantize" if o.types is None else "stream pass"
        t.add_row(
            "  " + o.path.name + (" (temporary)" if o.temporary else ""),
            who,
            ("~" if o.types is None else "") + human_bytes(o.nbytes),
        )
    console.print(t)
    print_quant_choices(r.overrides, plan.overridden)
    for im in plan.imatrix.values():
        console.print(f"  importance matrix: {im.file} ({len(im.data.sums)} matrices, {im.data.chunk_count} chunks)")
    for keep in plan.imatrix_keep.values():
        console.print(f"  importance matrix: computed from the 16-bit file over the calibration text -> {keep.name}")
    if any(o.types is None for o in plan.derived):
        console.print("  [dim]~ sizes of llama.cpp's files are estimates (its mix is decided from the 16-bit file)[/]")
    replace = "exists, replaced (--force)" if r.force else "[red]exists, --force to replace[/]"
    for path in plan.existing:
        console.print(f"  {escape(path.name)} {replace}", soft_wrap=True)
    ok = plan.disk_free >= plan.disk_needed
    console.print(
        f"  disk: needs ~{human_bytes(plan.disk_needed)}, {human_bytes(plan.disk_free)} free "
        + ("[green]ok[/]" if ok else "[red]NOT ENOUGH[/]")
    )


def _math_line(plan: Plan) -> str:
    if plan.request.math:
        return f"{plan.math} for every tensor (--math {plan.request.math})"
    if plan.math == "bf16":
        return "bf16, the ExPO authors' roundings (both checkpoints store every tensor in bf16)"
    if plan.math == "f32":
        return "f32, rounded once (the two checkpoints do not both store their tensors in bf16)"
    n = sum(j.math == "bf16" for j in plan.tensors)
    return f"mixed: bf16 for the {n} tensors both checkpoints store in bf16, f32 for the other {len(plan.tensors) - n}"


def print_quant_choices(ov: TensorOverrides, overridden: dict[str, list[str]]) -> None:
    """Which tensors the overrides change, from the names alone."""
    if ov.output_tensor_type is not None:
        console.print(f"  output.weight -> {ov.output_tensor_type.name}")
    if ov.token_embedding_type is not None:
        console.print(f"  token_embd.weight -> {ov.token_embedding_type.name}")
    for pattern, qtype in ov.tensor_types:
        names = overridden.get(pattern, [])
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        console.print(f"  --tensor-type {pattern}={qtype.name.lower()}: {len(names)} tensors ({shown})", soft_wrap=True)
    if ov.pure:
        console.print("  --pure: every quantized tensor in the main type, no mix")


def parse_alphas(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(a) for a in text.split(","))
    except ValueError:
        raise ExpoError(f"--alpha {text!r}: a number or a comma-separated list of numbers") from None


@click.command()
@click.option(
    "--preset",
    default=None,
    metavar="NAME",
    help="A published ExPO model (see `expo-gguf presets`): fills --sft, --rlhf and --alpha "
    "[default: starling-lm-7b-beta].",
)
@click.option(
    "--sft",
    default=None,
    help="SFT checkpoint: a local directory or a Hugging Face repo id (looked up in the local HF cache, "
    "never downloaded; see --remote) [default: the preset's].",
)
@click.option(
    "--rlhf",
    default=None,
    help="RLHF (aligned) checkpoint: a local directory or a repo id in the HF cache [default: the preset's].",
)
@click.option(
    "--alpha",
    "alpha_text",
    default=None,
    metavar="A[,A...]",
    help="Extrapolation strength: theta = rlhf + alpha * (rlhf - sft); 0 gives RLHF, -1 gives SFT "
    "[default: the preset's]. Several (0.1,0.3,0.5): one read of the inputs, files NAME-aALPHA-QUANT.gguf.",
)
@click.option(
    "--chat-template",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Jinja chat template file to write instead of the RLHF checkpoint's own.",
)
@click.option(
    "-q",
    "--quant",
    "quant_text",
    default="q8_0",
    show_default=True,
    metavar="LIST",
    help=f"Comma-separated quant types, case-insensitive, by llama-quantize's names. {quant_help()}. "
    "All come from one extrapolation pass.",
)
@click.option(
    "--math",
    type=click.Choice(MATHS),
    default=None,
    help="bf16: the ExPO authors' arithmetic, each step rounded to bf16 as their torch script does, so "
    "the result is the published model bit for bit; f32: float32, rounded once when written [default: bf16 "
    "for each tensor both checkpoints store in bf16, f32 for the others].",
)
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("models"), show_default=True)
@click.option(
    "--name",
    default=None,
    help="Output base name; files are OUTDIR/NAME-QUANT.gguf [default: <RLHF name>-ExPO-aALPHA; "
    "<RLHF name>-ExPO, the published model's name, only for a preset's pair at that preset's alpha].",
)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option(
    "--keep-cache",
    is_flag=True,
    help="Read and write through the page cache and leave the inputs and outputs in it (faster when you "
    "build from the same pair again soon). By default a build reads with O_DIRECT where it can and leaves "
    "the cache as it found it.",
)
@click.option(
    "--remote",
    is_flag=True,
    help="Read --sft and --rlhf from the Hugging Face hub as the build goes (range requests, each "
    "shard streamed once and checked against the hub's sha256); nothing but the outputs is written. "
    "HF_ENDPOINT, HF_TOKEN and HF_HUB_DOWNLOAD_TIMEOUT apply.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check everything and print the whole plan (files, sizes, RAM, disk); write nothing. Exits "
    "non-zero, after the plan, where the build would refuse (outputs exist, folder not writable, disk short).",
)
@imatrix_options
@override_options
@threads_option
def build(
    preset: str | None,
    sft: str | None,
    rlhf: str | None,
    alpha_text: str | None,
    chat_template: Path | None,
    quant_text: str,
    math: str | None,
    outdir: Path,
    name: str | None,
    force: bool,
    keep_cache: bool,
    remote: bool,
    dry_run: bool,
    imatrix: str | None,
    calibration: Path | None,
    imatrix_chunks: int | None,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
    tensor_types: tuple[str, ...],
    pure: bool,
    threads: int | None,
) -> None:
    """Extrapolate SFT -> RLHF and write GGUF files that llama.cpp runs.

    Reads both checkpoints once, tensor by tensor (memory stays flat), and writes every requested
    quantization from that single pass; K-quants (q4_k_m, ...) are then made by llama.cpp's own
    quantizer from a 16-bit intermediate, removed afterwards unless f16 was asked for. Beside each
    GGUF goes an Ollama Modelfile (NAME-QUANT.Modelfile).
    """
    check_auto_options(imatrix, calibration, imatrix_chunks)
    overrides = parse_overrides(output_tensor_type, token_embedding_type, tensor_types, pure)
    p = find_preset(preset) if preset else load_presets()[0]
    alphas = parse_alphas(alpha_text) if alpha_text is not None else (p.alpha,)
    sft, rlhf = sft or p.sft, rlhf or p.rlhf
    req = BuildRequest(
        sft,
        rlhf,
        alphas,
        tuple(parse_quants(quant_text)),
        outdir,
        name,
        force,
        threads or usable_cores(),
        chat_template,
        p.fallback_template(rlhf),
        keep_cache=keep_cache,
        math=math,
        overrides=overrides,
        imatrix=imatrix,
        remote=remote,
    )
    compiled_kernels()  # an EXPO_GGUF_KERNELS that cannot be met is refused before any work
    plan = make_plan(req)
    if not dry_run:
        check_ready(plan)
    for w in plan.warnings:
        warn(w)
    print_plan(plan)
    if dry_run:
        check_ready(plan)  # a check: what would stop the build, after the whole plan
        return
    with progress("bytes", keep=True) as bar:
        built = run_build(plan, bar, auto_maker(calibration, imatrix_chunks, req.threads, bar))
    for b in built:  # for `ollama create -f NAME-QUANT.Modelfile`; derived from the file just written
        write_modelfile(b.path, force=True)
    t = Table(title=f"built in {plan.request.outdir}")
    for col in ("file", "type", "size", "seconds", "sha256"):
        t.add_column(col, overflow="fold")
    for b in built:
        t.add_row(b.path.name, b.quant, human_bytes(b.nbytes), f"{b.seconds:.1f}", b.sha256)
    console.print(t)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "-q", "--quant", "quant_text", required=True, help=f"Target type, by llama-quantize's names. {quant_help()}."
)
@click.option(
    "-o",
    "--out",
    type=click.Path(),  # a str: Path() would drop the slash of DIR/
    default=None,
    help="Output file, or a folder (DIR/) for the default name [default: SRC's name with its type "
    "replaced (X-F16.gguf -> X-Q4_K_M.gguf, X.Q4_1.gguf -> X.Q8_0.gguf), beside SRC, or in the current "
    "directory when SRC's folder is not writable or belongs to an installed package].",
)
@click.option("--force", is_flag=True, help="Overwrite the output file.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the type and size llama.cpp's quantizer would give each tensor; write nothing.",
)
@imatrix_options
@override_options
@threads_option
def quantize(
    src: Path,
    quant_text: str,
    out: str | None,
    force: bool,
    dry_run: bool,
    imatrix: str | None,
    calibration: Path | None,
    imatrix_chunks: int | None,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
    tensor_types: tuple[str, ...],
    pure: bool,
    threads: int | None,
) -> None:
    """GGUF to GGUF with llama.cpp's quantizer (e.g. F16 -> Q4_K_M, or any type -> F32).

    Warns when SRC has fewer bits than the target (its losses stay). Beside the GGUF goes an
    Ollama Modelfile, as build writes one.

    \b
      expo-gguf quantize X-F16.gguf -q iq4_xs --imatrix X.imatrix.gguf
      expo-gguf quantize X-F16.gguf -q q4_k_m --output-tensor-type q8_0 --tensor-type attn_v=q6_k
    """
    quants = parse_quants(quant_text)
    if len(quants) != 1:
        raise click.UsageError("quantize takes one --quant")
    check_auto_options(imatrix, calibration, imatrix_chunks)
    overrides = parse_overrides(output_tensor_type, token_embedding_type, tensor_types, pure)
    threads = threads or usable_cores()
    given: ImatrixInput | None = None
    if imatrix is not None and imatrix != "auto":
        given = load_imatrix(Path(imatrix))  # a damaged file is refused before any work
    job = plan_requantize(src, quants[0], out, force, overrides=overrides, have_imatrix=imatrix is not None)
    keep = imatrix_beside(job.dst) if imatrix == "auto" else None  # beside the output: SRC's folder may not be ours
    if keep is not None and keep.exists():
        given = load_imatrix(keep)
    for text in job.warnings:
        warn(text)
    for text in job.notes:
        note(text)
    if given is not None and job.uses_imatrix:
        check_imatrix(given.data, model_tensors(src), src.name, job.quant.needs_imatrix)
        if keep is not None:
            note(f"reusing {keep} (an earlier --imatrix auto of this model); delete it to recompute")
    elif imatrix is not None and not job.uses_imatrix:
        warn(f"{job.quant.name} does not use an importance matrix; --imatrix ignored")
    print_quant_choices(overrides, job.changed)
    if dry_run:
        plan = dry_run_job(job, threads, given if job.uses_imatrix else None)
        counts: dict[str, int] = {}
        for t in plan.types.values():
            counts[t.name] = counts.get(t.name, 0) + 1
        mix = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        console.print(f"{job.dst}  {job.quant.label}  {human_bytes(size_of(src, plan.types))} of tensors ({mix})")
        console.print("  [dim]types and size from llama.cpp's own dry run; nothing written[/]")
        if keep is not None and given is None and job.uses_imatrix:
            console.print(f"  importance matrix: would be computed over the calibration text -> {keep}")
        return
    with progress() as bar:
        get = (lambda: given) if given is not None else None
        if keep is not None and given is None:
            make = auto_maker(calibration, imatrix_chunks, threads, bar)
            get = lambda: make(src, keep)  # noqa: E731
        result = run_requantize(job, threads, get)
    modelfile = write_modelfile(result.path, force=True)  # derived from the file just written, as build's
    console.print(
        f"{result.path}  {result.quant}  {human_bytes(result.nbytes)}  {result.seconds:.1f}s  sha256 {result.sha256}",
        soft_wrap=True,
    )
    console.print(f"  ollama create NAME -f {escape(str(modelfile))}", soft_wrap=True)


@click.command()
def presets() -> None:
    """The published ExPO models `build --preset NAME` reproduces, with the alpha of each model card."""
    for i, p in enumerate(load_presets()):
        console.print(
            f"[bold]{p.name}[/]{' (default)' if i == 0 else ''}  alpha {p.alpha:g}  -> {p.output_name}-QUANT.gguf"
        )
        console.print(f"  SFT   {p.sft}\n  RLHF  {p.rlhf}\n  card  {p.source}", soft_wrap=True)
        if p.chat_template:
            console.print("  template  its model card's, if the RLHF checkpoint ships none", soft_wrap=True)


COMMANDS = (build, quantize, presets)
