"""Options more than one command takes, defined once: how to run a model, and what to print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def gpu_layers_option(f: F) -> F:
    return click.option(
        "-ngl",
        "--n-gpu-layers",
        default="auto",
        show_default=True,
        metavar="N|-1|auto",
        help="Layers to offload to the GPU: N, -1 for all, or auto.",
    )(f)


def threads_option(f: F) -> F:
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads [default: every core this process may use].",
    )(f)


def verbose_option(f: F) -> F:
    return click.option("--verbose", is_flag=True, help="Show llama.cpp's log.")(f)


def ctx_option(default: int, minimum: int, help: str) -> Callable[[F], F]:
    return click.option("--ctx", default=default, show_default=True, type=click.IntRange(min=minimum), help=help)


def run_options(default_ctx: int, minimum_ctx: int, ctx_help: str) -> Callable[[F], F]:
    """--threads, --ctx, -ngl and --verbose, in that order on every command that runs a model."""

    def apply(f: F) -> F:
        return threads_option(ctx_option(default_ctx, minimum_ctx, ctx_help)(gpu_layers_option(verbose_option(f))))

    return apply


def imatrix_options(f: F) -> F:
    """--imatrix, --calibration, --imatrix-chunks: build and quantize take the same three."""
    f = click.option(
        "--imatrix-chunks",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="With --imatrix auto: use the first N chunks of 512 tokens of the calibration text "
        "[default: all of it]; fewer is faster and a little worse.",
    )(f)
    f = click.option(
        "--calibration",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE",
        help="With --imatrix auto: the text to run the model over instead of the one expo-gguf ships.",
    )(f)
    return click.option(
        "--imatrix",
        "imatrix",
        default=None,
        metavar="FILE|auto",
        help="Importance matrix for the quantizer (K-, IQ- and 4/5-bit types): a file from `expo-gguf imatrix` "
        "or llama-imatrix (.gguf or legacy .dat), or auto: computed from the 16-bit model over a shipped "
        "calibration text and kept as NAME.imatrix.gguf (reused next time).",
    )(f)


def override_options(f: F) -> F:
    """llama-quantize's per-tensor choices, by its names."""
    f = click.option("--pure", is_flag=True, help="Every tensor in the main type: no mix (llama-quantize --pure).")(f)
    f = click.option(
        "--tensor-type",
        "tensor_types",
        multiple=True,
        metavar="PATTERN=TYPE",
        help="Tensors whose GGUF name matches the regular expression get TYPE (repeatable; the first match "
        "wins), e.g. attn_v=q6_k or 'blk\\.[0-3]\\.ffn_down=q8_0'.",
    )(f)
    f = click.option(
        "--token-embedding-type", default=None, metavar="TYPE", help="Type of token_embd.weight (e.g. q8_0)."
    )(f)
    return click.option(
        "--output-tensor-type", default=None, metavar="TYPE", help="Type of output.weight (e.g. q8_0, f16)."
    )(f)
