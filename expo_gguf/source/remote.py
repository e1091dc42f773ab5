"""One file on the Hugging Face hub read front to back by HTTP range requests, hashed as it streams.

huggingface_hub resolves files and downloads whole ones; it has no ranged reader that resumes from
the byte where a transfer stopped and hashes as it goes, so this module is one. A ``RemoteFile``
is a byte source: ``read_into(offset, buffer)`` from any number of threads. A thread of its own
streams the file in large blocks (``BLOCK`` bytes) a bounded distance ahead of the furthest byte
asked for, keeps a bounded window behind it for readers still on earlier chunks, and feeds every
byte to sha256 in file order; ``finish()`` drains the rest and compares with the hub's sha256 (the
LFS etag). Memory is ``AHEAD + BEHIND`` per file being read, whatever the file's size, and
nothing once the reader says it is done with it (``release``).

A read behind the window (a checkpoint whose tensors lie in another order than the other's) is
served by a range request of its own and counted in ``refetched``; the stream still hashes every
byte. Transient errors (connection reset, timeouts, 5xx, 429) retry with backoff from the byte
where the transfer stopped, through the resolve URL again (so a CDN link that expired during a
long build is renewed); after ``TRIES`` failures in a row without a byte, one ``ExpoError`` line
names the file and the offset.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2

from ..errors import ExpoError

MiB = 1 << 20
BLOCK = 4 * MiB
AHEAD = 16 * MiB
BEHIND = 16 * MiB
TRIES = 5
BACKOFF_S = 0.5  # first wait; doubles each try, capped at BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


class _Transient(Exception):
    """A failure worth retrying: the network, a timeout, or a 5xx/429."""


@dataclass(frozen=True)
class RemoteSpec:
    """Where one file's bytes are and what they must hash to."""

    label: str  # repo/file@revision, for messages
    url: str  # the resolve URL at the pinned commit: each (re)open follows its redirect afresh
    size: int
    sha256: str | None  # the LFS etag; None when the hub gave none (then only the size is checked)
    headers: tuple[tuple[str, str], ...] = ()  # auth for the hub (httpx drops it on a redirect off the hub)


def http_error(label: str, status: int) -> ExpoError:
    """The line a user reads for a refused request."""
    repo = "/".join(label.split("@")[0].split("/")[:2])
    if status == 401:
        return ExpoError(
            f"{repo}: the hub refused access (401): a gated or private repo needs a token: "
            "`hf auth login` or HF_TOKEN (and check the repo id)"
        )
    if status == 403:
        return ExpoError(
            f"{repo}: your token has no access (403): accept the repo's terms on its page "
            "(https://huggingface.co/" + repo + "), or use a token with read access"
        )
    if status == 404:
        return ExpoError(f"{label}: not found on the hub (404)")
    return ExpoError(f"{label}: the hub answered HTTP {status}", exit_code=1)


def _backoff(attempt: int) -> None:
    time.sleep(min(BACKOFF_S * 2**attempt, BACKOFF_MAX_S))


class _Stream:
    """One GET with a Range from ``start`` to ``stop``, re-opened from the byte where it stopped."""

    def __init__(self, client: httpx2.Client, spec: RemoteSpec, start: int, stop: int, timeout: float) -> None:
        self.client, self.spec, self.pos, self.stop, self.timeout = client, spec, start, stop, timeout
        self._cm: object | None = None
        self._it: Iterator[bytes] | None = None
        self._pending = memoryview(b"")  # received, not handed out; the network is at pos + len(_pending)

    def _open(self) -> None:
        headers = dict(self.spec.headers)
        headers["Range"] = f"bytes={self.pos}-{self.stop - 1}"
        headers["Accept-Encoding"] = "identity"
        cm = self.client.stream("GET", self.spec.url, headers=headers, timeout=self.timeout, follow_redirects=True)
        resp = cm.__enter__()
        self._cm = cm
        if resp.status_code in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {resp.status_code}")
        if resp.status_code != 206:
            self.close()
            if resp.status_code == 200:
                raise ExpoError(f"{self.spec.label}: the server ignored the byte range (HTTP 200)", exit_code=1)
            raise http_error(self.spec.label, resp.status_code)
        self._it = resp.iter_raw()  # as the socket delivers: no re-chunking copy

    def read(self, n: int) -> bytearray:
        """Exactly ``n`` bytes (fewer only at ``stop``); a failed transfer resumes at ``pos``."""
        n = min(n, self.stop - self.pos)
        buf = bytearray(n)
        view = memoryview(buf)
        got = failures = 0
        while got < n:
            if self._pending:
                k = min(len(self._pending), n - got)
                view[got : got + k] = self._pending[:k]
                self._pending = self._pending[k:]
                got += k
                self.pos += k
                continue
            try:
                if self._it is None:
                    self._open()
                chunk = next(self._it, None)  # type: ignore[arg-type]
                if chunk is None:
                    raise _Transient(f"connection closed {self.stop - self.pos} bytes early")
            except (httpx2.TransportError, _Transient) as e:
                self.close()
                failures += 1
                if failures >= TRIES:
                    raise ExpoError(
                        f"{self.spec.label}: download failed at byte {self.pos} after {TRIES} tries ({e})",
                        exit_code=1,
                    ) from None
                _backoff(failures - 1)
                continue
            failures = 0
            self._pending = memoryview(chunk)
        return buf

    def close(self) -> None:
        cm, self._cm, self._it = self._cm, None, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)  # type: ignore[attr-defined]
            except httpx2.HTTPError:
                pass


def fetch_range(client: httpx2.Client, spec: RemoteSpec, start: int, stop: int, timeout: float) -> bytearray:
    """Bytes [start, stop) of a file in one ranged GET, resumed from where it stopped."""
    s = _Stream(client, spec, start, stop, timeout)
    try:
        return s.read(stop - start)
    finally:
        s.close()


class RemoteFile:
    """A byte source over one remote file: ``read_into`` from many threads, one stream front to back.

    The stream thread runs at most ``AHEAD`` bytes past the furthest byte any reader asked for,
    and keeps ``BEHIND`` bytes below that for readers still on earlier chunks.
    """

    def __init__(self, client: httpx2.Client, spec: RemoteSpec, timeout: float) -> None:
        self.client, self.spec, self.timeout = client, spec, timeout
        self.refetched = 0  # bytes read again by a request of their own (behind the window)
        self._cond = threading.Condition()
        self._blocks: deque[tuple[int, memoryview]] = deque()
        self._head = 0  # bytes streamed (and hashed) so far
        self._wanted = 0  # the furthest byte asked for
        self._released = False  # the reader said it is done: the rest is streamed only to be hashed
        self._error: BaseException | None = None
        self._closed = False
        self._sha = hashlib.sha256()
        self._thread: threading.Thread | None = None

    alignment = 1  # any offset, any length (the ``ByteSource`` protocol of a block reader)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="expo-remote", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        stream = _Stream(self.client, self.spec, 0, self.spec.size, self.timeout)
        try:
            while self._head < self.spec.size:
                with self._cond:
                    while self._head - self._wanted >= AHEAD and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                block = stream.read(BLOCK)
                self._sha.update(block)
                with self._cond:
                    if self._closed:
                        return
                    if not self._released:
                        self._blocks.append((self._head, memoryview(block)))
                    self._head += len(block)
                    self._evict()
                    self._cond.notify_all()
            digest = self._sha.hexdigest()
            if self.spec.sha256 and digest != self.spec.sha256:
                raise ExpoError(
                    f"{self.spec.label}: sha256 mismatch: the hub says {self.spec.sha256}, "
                    f"the {self.spec.size} bytes received hash to {digest}",
                    exit_code=1,
                )
        except BaseException as e:  # handed to the readers
            with self._cond:
                self._error = e
                self._cond.notify_all()
        finally:
            stream.close()
            with self._cond:
                self._cond.notify_all()

    def _evict(self) -> None:
        """Drop blocks more than ``BEHIND`` below both the stream and the furthest byte asked for."""
        floor = min(self._head, self._wanted) - BEHIND
        while self._blocks and self._blocks[0][0] + len(self._blocks[0][1]) <= floor:
            self._blocks.popleft()

    def read_into(self, offset: int, out: memoryview) -> int:
        """Fill ``out`` with the bytes at ``offset``; returns how many (short only past the end)."""
        n = min(len(out), max(0, self.spec.size - offset))
        end = offset + n
        with self._cond:
            self._start()
            if end > self._wanted:
                self._wanted = end
                self._cond.notify_all()
            while self._head < end and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            lo = self._blocks[0][0] if self._blocks else self._head
            if offset >= lo:
                for start, block in self._blocks:
                    a, b = max(offset, start), min(end, start + len(block))
                    if a < b:
                        out[a - offset : b - offset] = block[a - start : b - start]
                self._evict()  # the stream may have ended: readers keep the window bounded too
                return n
        data = fetch_range(self.client, self.spec, offset, end, self.timeout)
        out[:n] = data
        with self._cond:
            self.refetched += n
        return n

    def release(self) -> None:
        """The reader is done with this file: free the window; the stream goes on to the end only
        to hash it (``finish`` waits for that)."""
        with self._cond:
            self._released = True
            self._blocks.clear()
            self._wanted = self.spec.size
            self._cond.notify_all()

    def finish(self) -> None:
        """Stream to the end (bytes nobody asked for too), then raise if the sha256 did not match."""
        with self._cond:
            self._start()
            self._wanted = self.spec.size
            self._cond.notify_all()
            while self._thread is not None and self._thread.is_alive() and self._error is None:
                self._cond.wait(0.1)
            if self._error is not None:
                raise self._error
            self._blocks.clear()

    def close(self) -> None:
        """Stop the stream; readers still waiting get an error instead of waiting for the network."""
        with self._cond:
            self._closed = True
            self._blocks.clear()
            if self._error is None:
                self._error = ExpoError(f"{self.spec.label}: read after close", exit_code=1)
            self._cond.notify_all()
