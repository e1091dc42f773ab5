"""A loopback stand-in for the Hugging Face hub: the endpoints huggingface_hub and expo-gguf call.

``GET /api/models/REPO/revision/REV`` (model_info), ``GET /api/models/REPO/tree/REV`` (the listing
snapshot_download reads), ``HEAD``/``GET /REPO/resolve/REV/FILE`` with the hub's headers
(``X-Repo-Commit``, ``ETag``; for large files a 302 to another host, ``localhost``, carrying
``X-Linked-Etag`` = sha256 and ``X-Linked-Size``, the way the hub hands LFS files to its CDN), and
``GET /blobs/SHA`` honouring ``Range``. Faults are switched on per test: every Nth blob request
cut mid-body, one corrupted byte, a missing file, a token required, a server that stops answering.
Point a client at it with ``HF_ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".model")


@dataclass
class Faults:
    drop_every: int = 0  # cut every Nth blob GET after half its body
    corrupt: str | None = None  # a file name: one byte flipped in its body (the etag stays right)
    missing: set[str] = field(default_factory=set)  # file names answered 404
    token: str | None = None  # when set, requests without "Bearer TOKEN" get 401
    gated: bool = False  # with token: a wrong token gets 403 (gated), not 401
    hang_streams: bool = False  # blob GETs for more than 1 MiB (not headers, not small files) never answer


@dataclass
class Stored:
    path: Path
    size: int
    sha256: str
    sha1: str


def _stored(path: Path) -> Stored:
    h, g = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
            g.update(block)
    return Stored(path, path.stat().st_size, h.hexdigest(), g.hexdigest())


class Hub:
    """Repos served from folders (read from disk per request); ``url`` is the endpoint, ``log``
    every request line."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.faults = Faults()
        self.log: list[str] = []
        self.blob_gets = 0
        self.served: dict[str, int] = {}  # blob sha256 -> body bytes sent
        self.repos: dict[str, tuple[str, dict[str, Stored]]] = {}
        self.blobs: dict[str, Stored] = {}
        for repo, folder in repos.items():
            stored = {p.relative_to(folder).as_posix(): _stored(p) for p in sorted(folder.rglob("*")) if p.is_file()}
            commit = hashlib.sha1(repr(sorted((k, s.sha256) for k, s in stored.items())).encode())
            self.repos[repo] = (commit.hexdigest(), stored)
            for s in stored.values():
                self.blobs[s.sha256] = s
        self._release = threading.Event()
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def commit(self, repo: str) -> str:
        return self.repos[repo][0]

    def served_bytes(self, repo: str, name: str) -> int:
        """Bytes of one file's body sent so far, over every request."""
        return self.served.get(self.repos[repo][1][name].sha256, 0)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: Hub

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.server_hub.log.append(f"{self.command} {self.path}")

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        f = self.server_hub.faults
        if f.token is None:
            return True
        got = self.headers.get("Authorization")
        if got == f"Bearer {f.token}":
            return True
        if f.gated and got:
            self._send(403, b'{"error":"gated"}', {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
        else:
            self._send(401, b'{"error":"unauthorized"}', {"X-Error-Code": "RepoNotFound"})
        return False

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        hub = self.server_hub
        path = self.path.split("?")[0]
        if m := re.fullmatch(r"/blobs/([0-9a-f]{64})", path):
            return self._blob(m.group(1))
        if not self._authorized():
            return
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path):
            repo, what, rev = m.group(1), m.group(2), m.group(3)
            if repo not in hub.repos:
                return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
            commit, files = hub.repos[repo]
            if what == "revision":
                body = {"id": repo, "modelId": repo, "sha": commit, "private": False, "siblings": []}
                body["siblings"] = [{"rfilename": k} for k in files]
            else:
                body = [
                    {"type": "file", "path": k, "size": s.size, "oid": s.sha1}
                    | ({"lfs": {"oid": s.sha256, "size": s.size, "pointerSize": 134}} if _is_lfs(k) else {})
                    for k, s in files.items()
                ]
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo, rev, name = m.groups()
            if repo not in hub.repos:
                return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
            commit, files = hub.repos[repo]
            if rev not in ("main", commit):
                return self._send(404, b"", {"X-Error-Code": "RevisionNotFound"})
            if name not in files or name in hub.faults.missing:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            s = files[name]
            if _is_lfs(name):
                return self._send(
                    302,
                    b"",
                    {
                        "Location": f"http://localhost:{hub.port}/blobs/{s.sha256}",
                        "X-Repo-Commit": commit,
                        "X-Linked-Etag": f'"{s.sha256}"',
                        "X-Linked-Size": str(s.size),
                        "ETag": f'"{s.sha1}"',
                    },
                )
            return self._send(200, s.path.read_bytes(), {"X-Repo-Commit": commit, "ETag": f'"{s.sha1}"'})
        self._send(404, b"", {})

    def _blob(self, sha: str) -> None:
        hub = self.server_hub
        blob = hub.blobs.get(sha)
        if blob is None:
            return self._send(404, b"")
        if self.command == "HEAD":
            self.send_response(200)
            self.send_header("Content-Length", str(blob.size))
            self.end_headers()
            return
        faults = hub.faults
        if self.headers.get("Authorization"):  # the hub's token must never reach its CDN
            return self._send(400, b"token sent to the CDN")
        with hub._lock:
            hub.blob_gets += 1
            nth = hub.blob_gets
        start, stop = 0, blob.size
        rng = self.headers.get("Range")
        code = 200
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng)):
            start = int(m.group(1))
            stop = min(int(m.group(2)) + 1 if m.group(2) else blob.size, blob.size)
            code = 206
        if faults.hang_streams and stop - start > 1 << 20:
            hub._release.wait(60)
            self.close_connection = True
            return
        self.send_response(code)
        self.send_header("Content-Length", str(stop - start))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{blob.size}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = faults.drop_every and nth % faults.drop_every == 0 and stop - start > 1
        end = start + (stop - start) // 2 if cut else stop
        corrupt = (
            blob.size // 2
            if faults.corrupt
            and any(
                s is blob and name == faults.corrupt for _, files in hub.repos.values() for name, s in files.items()
            )
            else -1
        )
        with open(blob.path, "rb") as f:
            pos = start
            while pos < end:
                data = os.pread(f.fileno(), min(1 << 22, end - pos), pos)
                if pos <= corrupt < pos + len(data):
                    i = corrupt - pos
                    data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
                self.wfile.write(data)
                self._count(sha, len(data))
                pos += len(data)
        if cut:
            self.wfile.flush()
            self.close_connection = True

    def _count(self, sha: str, n: int) -> None:
        hub = self.server_hub
        with hub._lock:
            hub.served[sha] = hub.served.get(sha, 0) + n


def _is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


def main() -> None:
    """``python tests/hub_server.py org/a=DIR org/b=DIR``: serve until killed; prints the endpoint."""
    import sys
    import time

    repos = {k: Path(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
    with Hub(repos) as hub:
        print(hub.url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
