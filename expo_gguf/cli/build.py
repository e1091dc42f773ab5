"""``build``: option parsing and printing around the library's plan and pass."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .._units import human_bytes, plural
from ..convert.execute import compiled_kernels, run_build
from ..convert.plan import MATHS, BuildRequest, Plan, check_ready, make_plan
from ..convert.summary import built_json, plan_json
from ..errors import ExpoError
from ..gguf_file.modelfile import refresh_modelfile
from ..quant.llama import TensorOverrides, parse_overrides
from ..quant.types import parse_quants, quant_help
from ..runtime.options import usable_cores
from ..source.presets import find_preset, load_presets
from ._options import imatrix_options, override_options, threads_option
from ._output import err, note, print_table, progress, warn
from ._output import out as console
from .imatrix import auto_maker, check_auto_options


def _say(console: Console, markup: str) -> None:
    """A plan line: on a terminal wrapped between words with a hanging indent, never inside a word
    (a name longer than the terminal runs on whole); piped, one line."""
    if not console.is_terminal:
        console.print(markup, soft_wrap=True)
        return
    text, width = Text.from_markup(markup), max(20, console.width - 4)
    cuts, start = [], 0
    for word in re.finditer(r"\S+", text.plain):
        if word.start() > start and word.end() - start > (width if cuts else console.width):
            cuts.append(word.start())
            start = word.start()
    for i, line in enumerate(text.divide(cuts)):
        line.rstrip()
        console.print(Text("    ") + line if i else line, soft_wrap=True)


def print_plan(plan: Plan, console: Console = console) -> None:
    """The plan for a person: no line breaks a name or a path (long lines run on, as the terminal
    wraps them), and the files as a table that never splits a cell (tab-separated when piped)."""
    r = plan.request
    title = plan.outputs[0].name if len(r.alphas) == 1 and plan.outputs else plan.name  # the model's name at it
    _say(
        console,
        f"[bold]{escape(title)}[/]  alpha={','.join(f'{a:g}' for a in r.alphas)}  ({plan.hparams.architecture}, "
        f"{plural(plan.hparams.block_count, 'layer')}, vocab {plan.hparams.vocab_size})",
    )
    for role, ckpt in (("RLHF", plan.rlhf), ("SFT ", plan.sft)):
        where = f"hub, revision {ckpt.revision}" if ckpt.remote else str(ckpt.path)
        if ckpt.revision and not ckpt.remote:
            where += f", revision {ckpt.revision}"
        _say(console, f"  {role} {escape(ckpt.label)}  ({escape(where)})")
    _say(
        console,
        f"  {plural(len(plan.tensors), 'tensor')}, input {human_bytes(plan.input_bytes)} read once, "
        f"{plural(r.threads, 'thread')}, peak RAM ~{human_bytes(plan.peak_ram)}",
    )
    _say(console, f"  math: {_math_line(plan)}")
    _say(
        console,
        f"  writing into {escape(str(r.outdir))}/"
        + (f"  [red]cannot: {escape(plan.unwritable)}[/]" if plan.unwritable else ""),
    )
    _print_files(plan, console)
    print_quant_choices(r.overrides, plan.overridden, console)
    for im in plan.imatrix.values():
        _say(
            console,
            f"  importance matrix: {escape(str(im.file))} ({plural(len(im.data.sums), 'matrix', 'matrices')}, "
            f"{plural(im.data.chunk_count, 'chunk')})",
        )
    for keep in plan.imatrix_keep.values():
        _say(
            console,
            f"  importance matrix: computed from the 16-bit file over the calibration text -> {escape(keep.name)}",
        )
    if any(o.estimate for o in plan.derived):
        _say(
            console,
            "  [dim]~ an estimate: the keys an importance matrix adds (or llama.cpp's mix, where its dry run "
            "could not be asked)[/]",
        )
    replace = "exists, replaced (--force)" if r.force else "[red]exists, --force to replace[/]"
    for path in plan.existing:
        _say(console, f"  {escape(path.name)} {replace}")
    ok = plan.disk_free >= plan.disk_needed
    _say(
        console,
        f"  disk: needs {'~' if any(o.estimate for o in plan.outputs) else ''}{human_bytes(plan.disk_needed)}, "
        f"{human_bytes(plan.disk_free)} free " + ("[green]ok[/]" if ok else "[red]NOT ENOUGH[/]"),
    )


def _print_files(plan: Plan, console: Console) -> None:
    """The files, one line each: on a terminal names padded to one column, each line whole (a long
    one runs on, never broken inside a name); piped, tab-separated (``print_table``)."""
    rows = [
        (
            o.path.name,
            ("llama.cpp quantize" if o.types is None else "stream pass") + (" (temporary)" if o.temporary else ""),
            ("~" if o.estimate else "") + human_bytes(o.nbytes),
        )
        for o in plan.outputs
    ]
    if not console.is_terminal:
        t = Table()
        for col in ("file", "written by", "size"):
            t.add_column(col)
        for row in rows:
            t.add_row(*(escape(c) for c in row))
        print_table(t, console)
        return
    wide = [max(len(r[k]) for r in rows) for k in (0, 1)]
    if 2 + wide[0] + 3 + wide[1] + 3 + max(len(r[2]) for r in rows) > console.width:  # two lines a file
        for name, who, size in rows:
            console.print(f"  {escape(name)}", soft_wrap=True)
            console.print(f"    {who}, {size}", soft_wrap=True, style="dim")
        return
    for name, who, size in rows:
        console.print(f"  {escape(name.ljust(wide[0]))}   {who.ljust(wide[1])}   {size}", soft_wrap=True)


def _math_line(plan: Plan) -> str:
    if plan.request.math:
        return f"{plan.math} for every tensor (--math {plan.request.math})"
    if plan.math == "bf16":
        return "bf16, the ExPO authors' roundings (both checkpoints store every tensor in bf16)"
    if plan.math == "f32":
        return "f32, rounded once (the two checkpoints do not both store their tensors in bf16)"
    n = sum(j.math == "bf16" for j in plan.tensors)
    return (
        f"mixed: bf16 for the {plural(n, 'tensor')} both checkpoints store in bf16, "
        f"f32 for the other {len(plan.tensors) - n}"
    )


def print_quant_choices(ov: TensorOverrides, overridden: dict[str, list[str]], console: Console = console) -> None:
    """Which tensors the overrides change, from the names alone."""
    if ov.output_tensor_type is not None:
        console.print(f"  output.weight -> {ov.output_tensor_type.name}")
    if ov.token_embedding_type is not None:
        console.print(f"  token_embd.weight -> {ov.token_embedding_type.name}")
    for pattern, qtype in ov.tensor_types:
        names = overridden.get(pattern, [])
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        console.print(
            f"  --tensor-type {pattern}={qtype.name.lower()}: {plural(len(names), 'tensor')} ({shown})", soft_wrap=True
        )
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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object on stdout instead of the plan and table: every file written (path, quant, "
    "alpha, bytes, sha256, seconds), the alphas and the total seconds; with --dry-run, the plan (every "
    "output with its planned size). Warnings and progress stay on stderr.",
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
    as_json: bool,
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
    t0 = time.perf_counter()
    plan = make_plan(req)
    if not dry_run:
        check_ready(plan)
    for w in plan.warnings:
        warn(w)
    if as_json and dry_run:
        click.echo(json.dumps(plan_json(plan), indent=2, ensure_ascii=False))
    else:
        print_plan(plan, err if as_json else console)  # with --json, stdout is the JSON alone
    if dry_run:
        check_ready(plan)  # a check: what would stop the build, after the whole plan
        return
    with progress("bytes", keep=True) as bar:
        built = run_build(plan, bar, auto_maker(calibration, imatrix_chunks, req.threads, bar))
    for b in built:  # for `ollama create -f NAME-QUANT.Modelfile`; derived from the file just written
        if kept := refresh_modelfile(b.path):  # a Modelfile the user edited is kept, with a note
            note(kept)
    if as_json:
        click.echo(json.dumps(built_json(plan, built, time.perf_counter() - t0), indent=2, ensure_ascii=False))
        return
    t = Table(title=f"built in {escape(str(plan.request.outdir))}")
    for col in ("file", "type", "size", "seconds", "sha256"):
        t.add_column(col, no_wrap=True)
    for b in built:
        t.add_row(escape(b.path.name), b.quant, human_bytes(b.nbytes), f"{b.seconds:.1f}", b.sha256)
    print_table(t)


COMMANDS = (build,)
