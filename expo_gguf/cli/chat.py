"""``expo-gguf chat`` and ``expo-gguf serve``: option parsing only; the work is in ``chat``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from .._fs import read_stdin_capped, utf8_text
from .._units import file_labels
from ..chat import keeping, vs
from ..chat import session as chat_session
from ..chat.conversation import load_conversation, load_threads
from ..chat.keeping import ChatLog, NoLog
from ..chat.messages import Message, Sampling
from ..chat.store import logging_disabled
from ..errors import ExpoError
from ..gguf_file.header import check_header, trained_context_length
from ..runtime.loader import load_model
from ..runtime.model import ChatModel, json_grammar
from ..runtime.options import RunOptions
from ._options import run_options
from ._output import err, warn

DEFAULTS = Sampling()
ONE_SHOT_MAX_TOKENS = 1024  # a one-shot or piped reply stops here unless --max-tokens says otherwise
MODEL_CTX = dict(
    default_ctx=4096, minimum_ctx=64, ctx_help="Context length in tokens, capped at the model's trained length."
)


def _run_options(ctx: int, n_gpu_layers: str, threads: int | None, verbose: bool) -> RunOptions:
    """The run options, knowing whether --ctx was given: only what the user asked for is warned about."""
    given = click.get_current_context().get_parameter_source("ctx") is not click.core.ParameterSource.DEFAULT
    return RunOptions(n_ctx=ctx, n_gpu_layers=n_gpu_layers, threads=threads, verbose=verbose, ctx_asked=given)


def _logs(
    paths: list[Path], histories: list[list[Message]], sampling: Sampling, source: str, no_log: bool, resume: str | None
) -> list[ChatLog | NoLog]:
    """Where each model's thread is kept: a new conversation each (starting with what --load
    gave), or the resumed one; nothing with --no-log or EXPO_GGUF_NO_LOG."""
    if no_log or logging_disabled():
        return [NoLog() for _ in paths]
    logs: list[ChatLog | NoLog] = []
    for p, history in zip(paths, histories):
        log = chat_session.chat_log(p, sampling, source, warn, resume=resume)
        if resume is None:
            log.start(history)
        logs.append(log)
    return logs


def _json_schema_grammar(value: str) -> str:
    """``--json-schema``: a file holding a JSON schema, or the schema itself, as a grammar; ``{}``
    is any JSON object. A schema that cannot be read or used is one line, before loading."""
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8") if value.strip()[:1] not in ("{", "[") and path.is_file() else value
    except (OSError, UnicodeDecodeError) as e:
        raise ExpoError(f"--json-schema: cannot read {value}: {getattr(e, 'strerror', None) or e}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        looks = value.strip()[:1] in ("{", "[")
        what = f"{value} is not JSON" if text is not value else "not JSON" if looks else "no such file, and not JSON"
        raise ExpoError(f"--json-schema: {what} ({e.msg} at line {e.lineno} column {e.colno})") from None
    try:
        return json_grammar(schema or None)
    except ExpoError as e:
        raise ExpoError(f"--json-schema: {e}") from None


def find_default_model(models_dir: Path = Path("models")) -> Path:
    """The newest visible ``.gguf`` under ``models_dir``: what ``expo-gguf build`` wrote last.

    A build in progress writes ``NAME.gguf.part`` and a hidden ``.NAME-F16.intermediate.gguf``
    there; both are newer than any finished file and neither is a model to chat with, so
    hidden files (and anything in a hidden folder) and non-``.gguf`` names are skipped.
    """
    found = [
        p
        for p in (models_dir.rglob("*.gguf") if models_dir.is_dir() else ())
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(models_dir).parts)
    ]
    if not found:
        raise ExpoError(f"no .gguf in ./{models_dir}; run `expo-gguf build --quant q8_0` first")
    return max(found, key=lambda p: p.stat().st_mtime)


@click.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@run_options(**MODEL_CTX)
@click.option("-p", "--prompt", help="Answer this once and exit (piped stdin is appended).")
@click.option("-i", "--interactive", is_flag=True, help="Chat even when stdin is not a terminal.")
@click.option("--system", help="System message.")
@click.option(
    "--load",
    "load_file",
    type=click.Path(path_type=Path),
    metavar="FILE.json",
    help="Start from a conversation /save wrote (its system message unless --system is given).",
)
@click.option("--temp", type=float, default=DEFAULTS.temp, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=DEFAULTS.top_p, show_default=True)
@click.option("--top-k", type=int, default=DEFAULTS.top_k, show_default=True)
@click.option("--min-p", type=float, default=DEFAULTS.min_p, show_default=True)
@click.option("--repeat-penalty", type=float, default=DEFAULTS.repeat_penalty, show_default=True)
@click.option(
    "--max-tokens",
    type=int,
    help=f"Cut replies at N tokens; -1 = until the model stops. Default: -1 in a chat,"
    f" {ONE_SHOT_MAX_TOKENS} for a one-shot reply.",
)
@click.option("--seed", type=int, default=-1, help="Sampling seed (default: random).")
@click.option(
    "--json-schema",
    metavar="FILE|JSON",
    help="A one-shot reply as JSON matching this schema (a file or the schema itself; {} for any JSON object).",
)
@click.option("--plain", is_flag=True, help="Print replies as plain text, not markdown.")
@click.option("-c", "--continue", "continue_", is_flag=True, help="Carry on the newest kept conversation.")
@click.option("--resume", metavar="ID", help="Carry on a kept conversation (`expo-gguf logs` lists their ids).")
@click.option("--no-log", is_flag=True, help="Keep nothing of this chat (also: EXPO_GGUF_NO_LOG=1).")
@click.option(
    "--vs",
    "vs_model",
    type=click.Path(path_type=Path),
    metavar="MODEL2",
    help="Load MODEL2 too: each message is answered by MODEL, then MODEL2, each keeping its own thread.",
)
def chat(
    model: Path | None,
    verbose: bool,
    n_gpu_layers: str,
    ctx: int,
    threads: int | None,
    prompt: str | None,
    interactive: bool,
    system: str | None,
    load_file: Path | None,
    temp: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repeat_penalty: float,
    max_tokens: int | None,
    seed: int,
    json_schema: str | None,
    plain: bool,
    continue_: bool,
    resume: str | None,
    no_log: bool,
    vs_model: Path | None,
) -> None:
    """Chat with a GGUF model (default: the newest under ./models).

    \b
      expo-gguf chat models/Starling-LM-7B-beta-ExPO-Q4_K_M.gguf -ngl auto
      expo-gguf chat MODEL -p "Summarise this" < notes.txt    one reply on stdout
      echo "hi" | expo-gguf chat MODEL                        piped stdin: one reply too
      expo-gguf chat A.gguf --vs B.gguf                       both answer, A first
      expo-gguf chat MODEL --load chat.json                   carry on from a /save
      expo-gguf chat --continue                               carry on the newest chat

    Every conversation is kept, each message as it is complete (`expo-gguf logs` lists,
    searches and exports them), unless --no-log or EXPO_GGUF_NO_LOG=1.
    """
    one_shot = prompt is not None or (not sys.stdin.isatty() and not interactive)
    capped = one_shot and max_tokens is None  # a pipe gets a reply of sane length, and is told
    if max_tokens is None:
        max_tokens = ONE_SHOT_MAX_TOKENS if one_shot else -1
    sampling = Sampling(
        temp=temp,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        max_tokens=max_tokens,
        seed=seed,
    )
    options = _run_options(ctx, n_gpu_layers, threads, verbose)
    if json_schema is not None and (not one_shot or vs_model is not None):
        raise click.UsageError("--json-schema shapes one reply: use it with -p or piped text, without --vs")
    grammar = _json_schema_grammar(json_schema) if json_schema is not None else None
    resumed = None
    if continue_ or resume is not None:
        if load_file is not None or vs_model is not None or (continue_ and resume is not None):
            raise click.UsageError("--continue and --resume carry on one kept conversation: not with --load or --vs")
        resumed = keeping.resume(resume)
        if model is None and resumed.model_path is None:
            raise ExpoError(f"the conversation's model {resumed.model_file} is gone; give the MODEL to carry on with")
        model = model if model is not None else resumed.model_path
    path = check_header(model if model is not None else find_default_model())
    paths = [path] + ([check_header(vs_model)] if vs_model is not None else [])
    names = file_labels(paths)
    question = ""
    if one_shot:
        piped = "" if sys.stdin.isatty() else read_stdin_capped("chat reads")
        question = "\n\n".join(part for part in (prompt and utf8_text(prompt, "-p"), piped.strip()) if part)
        if not question.strip():
            raise ExpoError("nothing to answer: give -p TEXT or pipe text on stdin")
    if resumed is not None:
        histories: list[list[Message]] = [resumed.messages]
    elif load_file is None:
        histories = [[] for _ in paths]  # one per model
    elif len(paths) == 1:
        histories = [load_conversation(load_file)]
    else:
        histories = load_threads(load_file, len(paths))
    if system:
        head: Message = {"role": "system", "content": utf8_text(system, "--system")}
        histories = [[head, *[m for m in h if m["role"] != "system"]] for h in histories]
    messages = histories[0]
    if len(paths) > 1 and not one_shot:  # before loading: the user may not have the memory for both
        Console(highlight=False).print(vs.estimate_memory(paths, ctx).line(), markup=False, soft_wrap=True)
    sessions: list[ChatModel] = []
    logs: list[ChatLog | NoLog] = []
    said: set[str] = set()  # a warning both models give (-ngl on a CPU-only build) is said once
    try:
        for p, name in zip(paths, names):  # one at a time: a second model that fails to load closes the first
            warnings: list[str] = []
            run = options.for_model(trained_context_length(p), warnings, name if len(paths) > 1 else None)
            sessions.append(load_model(p, run, seed=sampling.seed))
            for warning in [*warnings, *sessions[-1].info.warnings]:
                if warning not in said:
                    said.add(warning)
                    warn(warning)
        source = "one-shot" if one_shot else "vs" if len(paths) > 1 else "chat"
        logs = _logs(paths, histories, sampling, source, no_log, resumed.id if resumed else None)
        if resumed is not None and system:
            logs[0].set_system(system)
        asked: list[Message] = messages + [{"role": "user", "content": question}]
        if len(sessions) > 1:
            if one_shot:
                asked_each = [h + asked[-1:] for h in histories]
                chat_session.answer_once_each(sessions, names, sampling, asked_each, err, capped, logs)
            else:
                chat_session.chat_interactive_vs(sessions, names, sampling, histories, plain, logs)
        elif one_shot:
            if grammar is not None:
                sessions[0].check_grammar(grammar)
            chat_session.answer_once(sessions[0], sampling, asked, err, verbose, capped, logs[0], grammar)
        else:
            chat_session.chat_interactive(sessions[0], sampling, messages, plain, logs[0])
    finally:
        for session in sessions:
            session.close()
        for log in logs:
            log.close()


@click.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@run_options(**MODEL_CTX)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback is reachable from other machines.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--api-key",
    metavar="KEY",
    envvar="EXPO_GGUF_API_KEY",
    show_envvar=True,
    help="Require 'Authorization: Bearer KEY' on the API (the page asks for it once).",
)
@click.option("--no-log", is_flag=True, help="Keep none of the conversations (also: EXPO_GGUF_NO_LOG=1).")
def serve(
    model: Path | None,
    verbose: bool,
    n_gpu_layers: str,
    ctx: int,
    threads: int | None,
    host: str,
    port: int,
    api_key: str | None,
    no_log: bool,
) -> None:
    """Serve a GGUF: a chat page at / and an OpenAI-compatible API at /v1.

    Replies are the same as `chat`'s (the GGUF's template, the same sampling defaults), one
    request at a time. Every conversation is kept, as `chat` keeps them, unless --no-log.

    \b
      expo-gguf serve MODEL                          http://127.0.0.1:8000/
      expo-gguf serve MODEL --host 0.0.0.0 --api-key KEY
    """
    from ..chat.server.run import serve as serve_model

    options = _run_options(ctx, n_gpu_layers, threads, verbose)
    serve_model(
        model if model is not None else find_default_model(),
        options,
        host,
        port,
        api_key,
        keep=not (no_log or logging_disabled()),
        warn=warn,
        say=lambda text: err.print(text, soft_wrap=True, markup=False, highlight=False),
    )


COMMANDS = (chat, serve)
