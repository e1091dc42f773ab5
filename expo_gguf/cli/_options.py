"""Options more than one command takes, defined once: how to run a model, and what to print."""

from __future__ import annotations

from collections.abc import Callable
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
