"""``build``, ``quantize`` and ``presets``: option parsing and printing around the library."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .._units import human_bytes
from ..build.execute import run_build
from ..build.plan import MATHS, BuildRequest, Plan, check_ready, make_plan
from ..errors import ExpoError
from ..gguf_file.modelfile import write_modelfile
from ..quant.requantize import plan_requantize, run_requantize
from ..quant.types import QUANTS, parse_quants
from ..runtime.options import usable_cores
from ..source.presets import find_preset, load_presets
from ._options import threads_option
from ._output import note, progress, warn
from ._output import out as console


def print_plan(plan: Plan) -> None:
    r = plan.request
    title = plan.outputs[0].name if len(r.alphas) == 1 and plan.outputs else plan.name  # the model's name at it
    console.print(
        f"[bold]{escape(title)}[/]  alpha={','.join(f'{a:g}' for a in r.alphas)}  ({plan.hparams.architecture}, "
        f"{plan.hparams.block_count} layers, vocab {plan.hparams.vocab_size})"
    )
    console.print(f"  RLHF {plan.rlhf.label}  ({plan.rlhf.path})")
    console.print(f"  SFT  {plan.sft.label}  ({plan.sft.path})")
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
    "never downloaded) [default: the preset's].",
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
    help=f"Comma-separated quant types, case-insensitive: {', '.join(QUANTS)}. All come from one extrapolation pass.",
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
    "--dry-run",
    is_flag=True,
    help="Check everything and print the whole plan (files, sizes, RAM, disk); write nothing. Exits "
    "non-zero, after the plan, where the build would refuse (outputs exist, folder not writable, disk short).",
)
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
    dry_run: bool,
    threads: int | None,
) -> None:
    """Extrapolate SFT -> RLHF and write GGUF files that llama.cpp runs.

    Reads both checkpoints once, tensor by tensor (memory stays flat), and writes every requested
    quantization from that single pass; K-quants (q4_k_m, ...) are then made by llama.cpp's own
    quantizer from a 16-bit intermediate, removed afterwards unless f16 was asked for. Beside each
    GGUF goes an Ollama Modelfile (NAME-QUANT.Modelfile).
    """
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
    )
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
        built = run_build(plan, bar)
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
@click.option("-q", "--quant", "quant_text", required=True, help=f"Target type: {', '.join(QUANTS)}.")
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
@threads_option
def quantize(src: Path, quant_text: str, out: str | None, force: bool, threads: int | None) -> None:
    """GGUF to GGUF with llama.cpp's quantizer (e.g. F16 -> Q4_K_M, or any type -> F32).

    Warns when SRC has fewer bits than the target (its losses stay). Beside the GGUF goes an
    Ollama Modelfile, as build writes one.
    """
    quants = parse_quants(quant_text)
    if len(quants) != 1:
        raise click.UsageError("quantize takes one --quant")
    job = plan_requantize(src, quants[0], out, force)
    for text in job.warnings:
        warn(text)
    for text in job.notes:
        note(text)
    result = run_requantize(job, threads or usable_cores())
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
