"""``expo-gguf chat`` and ``expo-gguf serve``: option parsing only; the work is in runtime/repl."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from . import chat_vs
from .cli import cli
from .errors import ExpoError
from .units import file_labels, human_bytes
from .gguf_check import check_header, trained_context_length
from .repl import Backend, run_repl
from .loader import LoadOptions, cap_context, load_model
from .runtime import ChatModel, Sampling, resolve_gpu_layers

DEFAULTS = Sampling()


def find_default_model(models_dir: Path = Path("models")) -> Path:
    """The newest visible ``.gguf`` under ``models_dir``: what ``expo-gguf build`` wrote last.

    A build in progress writes ``NAME.gguf.part`` and a hidden ``.NAME-F16.intermediate.gguf``
    there; both are newer than any finished file and neither is a model to chat with, so
    hidden files (and anything in a hidden folder) and non-``.gguf`` names are skipped.
    """
    found = [
        p for p in (models_dir.rglob("*.gguf") if models_dir.is_dir() else ())
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(models_dir).parts)
    ]
    if not found:
        raise ExpoError(f"no .gguf in ./{models_dir}; run `expo-gguf build --quant q8_0` first")
    return max(found, key=lambda p: p.stat().st_mtime)


def _model_options(f):
    """Options shared by chat and serve: which model and how to load it."""
    f = click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: llama.cpp's choice).")(f)
    f = click.option("--ctx", default=4096, show_default=True, type=click.IntRange(min=64),
                     help="Context length in tokens, capped at the model's trained length.")(f)
    f = click.option("-ngl", "--n-gpu-layers", default="auto", show_default=True, metavar="N|-1|auto",
                     help="Layers to offload to the GPU: N, -1 for all, or auto.")(f)
    f = click.option("--verbose", is_flag=True, help="Show llama.cpp's log.")(f)
    return click.argument("model", required=False, type=click.Path(path_type=Path))(f)


def _backend(session: ChatModel, sampling: Sampling) -> Backend:
    """Bind a loaded model to the REPL's callbacks; ``sampling`` is shared, so /set applies."""
    info = session.info

    def stats() -> dict[str, str]:
        s = session.last_stats
        if s is None:
            return {}
        return {
            "prompt tokens": f"{s.prompt_tokens} ({s.prompt_evaluated} evaluated, rest from cache)",
            "generated": f"{s.generated} tokens (stopped: {s.stop})",
            "time to first token": f"{s.ttft_s:.3f} s",
            "prompt speed": f"{s.prompt_tps:.1f} tok/s",
            "generation speed": f"{s.gen_tps:.1f} tok/s",
            "context": f"{s.ctx_used}/{s.n_ctx} tokens",
        }

    def show() -> dict[str, str]:
        used = session.last_stats.ctx_used if session.last_stats else 0
        return {
            "model": f"{info.name} ({info.path})", "quant": info.quant,
            "size": human_bytes(info.size_bytes), "device": info.device,
            "context": f"{used}/{info.n_ctx} used (trained {info.n_ctx_train})",
            "stop ids": ", ".join(map(str, sorted(session.stop_ids))),
        }

    return Backend(
        reply=lambda messages: session.stream(messages, sampling),
        fit=lambda messages: session.fit(messages, sampling),
        status=lambda: session.last_stats.line() if session.last_stats else None,
        stats=stats,
        show=show,
    )


@cli.command()
@_model_options
@click.option("-p", "--prompt", help="Answer this once and exit (piped stdin is appended).")
@click.option("-i", "--interactive", is_flag=True, help="Chat even when stdin is not a terminal.")
@click.option("--system", help="System message.")
@click.option("--temp", type=float, default=DEFAULTS.temp, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=DEFAULTS.top_p, show_default=True)
@click.option("--top-k", type=int, default=DEFAULTS.top_k, show_default=True)
@click.option("--min-p", type=float, default=DEFAULTS.min_p, show_default=True)
@click.option("--repeat-penalty", type=float, default=DEFAULTS.repeat_penalty, show_default=True)
@click.option("--max-tokens", type=int, default=-1, show_default=True, help="-1 = until the model stops.")
@click.option("--seed", type=int, default=-1, help="Sampling seed (default: random).")
@click.option("--plain", is_flag=True, help="Print replies as plain text, not markdown.")
@click.option("--vs", "vs_model", type=click.Path(path_type=Path), metavar="MODEL2",
              help="Load MODEL2 too: each message is answered by MODEL, then MODEL2, each keeping its own thread.")
def chat(model: Path | None, verbose: bool, n_gpu_layers: str, ctx: int, threads: int | None,
         prompt: str | None, interactive: bool, system: str | None, temp: float, top_p: float,
         top_k: int, min_p: float, repeat_penalty: float, max_tokens: int, seed: int,
         plain: bool, vs_model: Path | None) -> None:
    """Chat with a GGUF model (default: the newest under ./models).

    \b
      expo-gguf chat models/Starling-LM-7B-beta-ExPO-Q4_K_M.gguf -ngl auto
      expo-gguf chat MODEL -p "Summarise this" < notes.txt    one reply on stdout
      echo "hi" | expo-gguf chat MODEL                        piped stdin: one reply too
      expo-gguf chat A.gguf --vs B.gguf                       both answer, A first
    """
    sampling = Sampling(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                        repeat_penalty=repeat_penalty, max_tokens=max_tokens, seed=seed)
    path = check_header(model if model is not None else find_default_model())
    paths = [path] + ([check_header(vs_model)] if vs_model is not None else [])
    one_shot = prompt is not None or (not sys.stdin.isatty() and not interactive)
    question = ""
    if one_shot:
        piped = "" if sys.stdin.isatty() else sys.stdin.read()
        question = "\n\n".join(part for part in (prompt, piped.strip()) if part)
        if not question.strip():
            raise ExpoError("nothing to answer: give -p TEXT or pipe text on stdin")
    err = Console(stderr=True, highlight=False)
    messages = [{"role": "system", "content": system}] if system else []
    if len(paths) > 1 and not one_shot:  # before loading: the user may not have the memory for both
        Console(highlight=False).print(chat_vs.estimate_memory(paths, ctx).line(), markup=False, soft_wrap=True)
    sessions: list[ChatModel] = []
    try:
        for p in paths:  # one after the other: a second model that fails to load closes the first
            sessions.append(load_model(LoadOptions(model=p, n_ctx=ctx, n_gpu_layers=n_gpu_layers,
                                                   threads=threads, seed=seed, verbose=verbose)))
            for warning in sessions[-1].info.warnings:
                err.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
        asked = messages + [{"role": "user", "content": question}]
        if len(sessions) > 1:
            names = file_labels(paths)
            if one_shot:
                chat_vs.one_shot(sessions, names, sampling, asked)
            else:
                _interactive_vs(sessions, names, sampling, messages, plain)
        elif one_shot:
            _one_shot(sessions[0], sampling, asked, err, verbose)
        else:
            _interactive(sessions[0], sampling, messages, plain)
    finally:
        for session in sessions:
            session.close()


def _one_shot(session: ChatModel, sampling: Sampling, messages: list[dict[str, str]],
              err: Console, verbose: bool) -> None:
    """The reply alone on stdout, streamed, so it pipes cleanly into other tools."""
    kept, _ = session.fit(messages, sampling)
    for chunk in session.stream(kept, sampling):
        click.echo(chunk, nl=False)
    click.echo()
    if verbose and session.last_stats:
        err.print(session.last_stats.line(), style="dim", markup=False)


def _interactive(session: ChatModel, sampling: Sampling, messages: list[dict[str, str]],
                 plain: bool) -> None:
    console = Console(highlight=False)
    info = session.info
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    console.print(f"[bold]{escape(info.name)}[/] · {info.quant} · {human_bytes(info.size_bytes)}"
                  f" · ctx {info.n_ctx} · {info.device}")
    for note in info.notes:
        console.print(f"note: {note}", style="dim", markup=False, soft_wrap=True)
    console.print("/help for commands, Ctrl+D or /exit to leave", style="dim")
    run_repl(_backend(session, sampling), sampling, console=console, messages=messages,
             markdown=not plain and console.is_terminal)


def _interactive_vs(sessions: list[ChatModel], names: list[str], sampling: Sampling,
                    messages: list[dict[str, str]], plain: bool) -> None:
    console = Console(highlight=False)
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    for line in chat_vs.banner(sessions, names):
        console.print(line, markup=False, soft_wrap=True)
    for note in dict.fromkeys(n for s in sessions for n in s.info.notes):
        console.print(f"note: {note}", style="dim", markup=False, soft_wrap=True)
    console.print("each message is answered by both, each model keeping its own thread;"
                  " /help for commands, Ctrl+D or /exit to leave", style="dim", soft_wrap=True)
    sides = [(name, s.info.path, _backend(s, sampling)) for name, s in zip(names, sessions)]
    chat_vs.run_vs(sides, sampling, console=console, messages=messages,
                   markdown=not plain and console.is_terminal)


def is_loopback(host: str) -> bool:
    """Whether only this machine can connect to ``host``; names other than localhost count as
    reachable, since what they resolve to can change."""
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server other machines can reach: a model server runs whatever prompt it
    is sent, on this machine's CPU/GPU, for anyone who can connect."""
    if is_loopback(host):
        return None
    who = "every interface" if host in ("0.0.0.0", "::", "[::]", "") else host
    guard = ("requests need the API key" if api_key else
             "anyone who can reach this machine can use the model; add --api-key KEY")
    return f"listening on {who} ({host}), not just this machine: {guard}"


@cli.command()
@_model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback is reachable from other machines.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--api-key", metavar="KEY", envvar="EXPO_GGUF_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every request.")
def serve(model: Path | None, verbose: bool, n_gpu_layers: str, ctx: int, threads: int | None,
          host: str, port: int, api_key: str | None) -> None:
    """Serve a GGUF over an OpenAI-compatible HTTP API (llama-cpp-python's server).

    The prompt comes from the GGUF's own chat template. Needs the server extra:

    \b
      pip install 'llama-cpp-python[server]'
    """
    path = check_header(model if model is not None else find_default_model())
    if api_key is not None and not api_key.strip():
        raise click.BadParameter("the key is empty", param_hint="--api-key")
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise ExpoError(f"serve needs llama-cpp-python's server extra ({e.name} is missing):"
                        " pip install 'llama-cpp-python[server]'") from None
    ngl, warning = resolve_gpu_layers(n_gpu_layers)
    warnings = [warning] if warning else []
    n_ctx = cap_context(ctx, trained_context_length(path), warnings)  # as chat does
    exposed = exposure_warning(host, api_key)
    warnings += [exposed] if exposed else []
    err = Console(stderr=True, highlight=False)
    for text in warnings:
        err.print(f"warning: {text}", style="yellow", markup=False, soft_wrap=True)
    extra = {"n_threads": threads, "n_threads_batch": threads} if threads else {}
    model_settings = ModelSettings(model=str(path), n_gpu_layers=ngl, n_ctx=n_ctx,
                                   verbose=verbose, **extra)
    app = create_app(server_settings=ServerSettings(host=host, port=port, api_key=api_key),
                     model_settings=[model_settings])
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    auth = " with an API key" if api_key else ""
    err.print(f"serving {path} at http://{shown}:{port}/v1{auth} (Ctrl+C stops)",
              soft_wrap=True, markup=False)
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")
