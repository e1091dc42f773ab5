"""``expo-gguf serve``: llama-cpp-python's OpenAI-compatible server over one GGUF.

The prompt comes from the GGUF's own chat template. What is ours: the context capped as ``chat``
caps it, the run options resolved as everywhere, and a warning when the address is reachable
from other machines (a model server runs whatever prompt it is sent, on this machine's CPU/GPU,
for anyone who can connect).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from ..errors import ExpoError
from ..gguf_file.header import check_header, trained_context_length
from ..runtime.options import RunOptions

SERVER_HINT = "pip install 'llama-cpp-python[server]'"


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
    """The warning for a server other machines can reach."""
    if is_loopback(host):
        return None
    who = "every interface" if host in ("0.0.0.0", "::", "[::]", "") else host
    guard = (
        "requests need the API key"
        if api_key
        else "anyone who can reach this machine can use the model; add --api-key KEY"
    )
    return f"listening on {who} ({host}), not just this machine: {guard}"


def serve(
    path: Path,
    options: RunOptions,
    host: str,
    port: int,
    api_key: str | None,
    warn: Callable[[str], None],
    say: Callable[[str], None],
) -> None:
    """Serve ``path`` until Ctrl+C; ``warn`` and ``say`` print on the caller's behalf."""
    path = check_header(path)
    if api_key is not None and not api_key.strip():
        raise ExpoError("--api-key: the key is empty")
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise ExpoError(f"serve needs llama-cpp-python's server extra ({e.name} is missing): {SERVER_HINT}") from None
    warnings: list[str] = []
    run = options.for_model(trained_context_length(path), warnings).resolved()  # as chat does
    warnings[:0] = [run.warning] if run.warning else []
    exposed = exposure_warning(host, api_key)
    warnings += [exposed] if exposed else []
    for text in warnings:
        warn(text)
    model_settings = ModelSettings(
        model=str(path),
        n_gpu_layers=run.gpu_layers,
        n_ctx=run.n_ctx,
        n_threads=run.threads,
        n_threads_batch=run.threads,
        verbose=run.verbose,
    )
    app = create_app(
        server_settings=ServerSettings(host=host, port=port, api_key=api_key), model_settings=[model_settings]
    )
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    auth = " with an API key" if api_key else ""
    say(f"serving {path} at http://{shown}:{port}/v1{auth} (Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="info" if run.verbose else "warning")
