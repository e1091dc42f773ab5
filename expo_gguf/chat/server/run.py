"""``expo-gguf serve``: the socket bound first, then the model loaded, then uvicorn on that socket.

Binding before loading means a port in use or an address that is not this machine's is one line
before minutes of loading. An address other machines can reach is said as the addresses they
would use (``0.0.0.0`` is every local IPv4 address, not a place to browse to), with a warning when
there is no API key: a model server runs whatever prompt it is sent, on this machine, for anyone.
Ctrl+C and SIGTERM stop accepting, end the replies being written (kept as interrupted), and the
command exits 130 with ``interrupted``, as every command does.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ...errors import ExpoError
from ...gguf_file.header import check_header, trained_context_length
from ...runtime.loader import load_model
from ...runtime.options import RunOptions
from ..store import ModelRecord
from .app import Server, create_app
from .keep import Keeper

SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address
ANY = ("0.0.0.0", "::", "[::]", "")


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
    """The warning for a server other machines can reach and anyone there may use."""
    if is_loopback(host) or api_key:
        return None
    who = "every interface" if host in ANY else host
    return (
        f"listening on {who} ({host}), not just this machine: anyone who can reach it can use the model;"
        " add --api-key KEY"
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or one ``ExpoError`` line saying why not."""
    name = host.strip("[]") or "0.0.0.0"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ExpoError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart does not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ExpoError(f"port {port} on {host} is in use; pick another with --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ExpoError(f"--host {host} is not an address of this machine") from None
        if e.errno == errno.EACCES:
            raise ExpoError(f"port {port} needs privileges on this system; use a port above 1023") from None
        raise ExpoError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _interface_ipv4() -> list[str]:
    """Every IPv4 address of this machine's interfaces (Linux ioctl), or what its name resolves to."""
    found: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                    found.append(socket.inet_ntoa(packed[20:24]))
                except OSError:
                    continue
    except (OSError, AttributeError):
        pass
    if not found:
        try:
            found = [str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
        except OSError:
            found = ["127.0.0.1"]
    return sorted(set(found), key=lambda a: (a.startswith("127."), a))


def reachable_at(host: str, port: int) -> list[str]:
    """The URLs a browser would use for this server: each local address for 0.0.0.0 / ::."""
    if host in ANY:
        hosts = _interface_ipv4()
    else:
        hosts = [host.strip("[]")]
    return [f"http://[{h}]:{port}/" if ":" in h else f"http://{h}:{port}/" for h in hosts]


def serve(
    path: Path,
    options: RunOptions,
    host: str,
    port: int,
    api_key: str | None,
    keep: bool,
    warn: Callable[[str], None],
    say: Callable[[str], None],
) -> None:
    """Serve ``path`` until Ctrl+C or SIGTERM (then ``KeyboardInterrupt``, as every command ends)."""
    import uvicorn

    path = check_header(path)
    if api_key is not None and not api_key.strip():
        raise ExpoError("--api-key: the key is empty")
    sock = bind(host, port)
    server: Server | None = None
    model = None
    try:
        warnings: list[str] = []
        run = options.for_model(trained_context_length(path), warnings)
        model = load_model(path, run)
        for text in [*warnings, *model.info.warnings]:
            warn(text)
        exposed = exposure_warning(host, api_key)
        if exposed:
            warn(exposed)
        record = ModelRecord(path.name, str(path.resolve()), path.stat().st_size, model.info.name)
        keeper = Keeper(record, warn) if keep else None
        server = Server(model, api_key, keeper)
        urls = reachable_at(host, port)
        auth = ", with an API key" if api_key else ""
        kept = "" if keep else ", nothing kept"
        say(f"serving {path.name} (ctx {model.info.n_ctx}{auth}{kept}) at {urls[0]} (the API at {urls[0]}v1)")
        for url in urls[1:]:
            say(f"  also at {url}")
        say("Ctrl+C stops")
        config = uvicorn.Config(
            create_app(server),
            log_level="info" if run.verbose else "warning",
            access_log=run.verbose,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        stopping = server

        class Stopping(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                stopping.cancel_all()  # replies being written end now, kept as interrupted
                super().handle_exit(sig, frame)

        Stopping(config).run(sockets=[sock])
    finally:
        sock.close()
        if server is not None:
            server.close()
        if model is not None:
            model.close()
