"""A checkpoint on the Hugging Face hub: listed, pinned to a commit, and either downloaded into the
HF cache (``download``) or opened for a build that streams it (``open_remote``).

huggingface_hub does the talking: ``model_info`` lists the repo and names the commit ``main``
points at, ``get_hf_file_metadata`` (a HEAD on the resolve URL) gives each shard's size, sha256
(the LFS etag) and where to fetch it, ``hf_hub_download`` fetches the small files, and
``snapshot_download`` with ``BUILD_PATTERNS`` fills the cache. Its token comes from the usual
places (``HF_TOKEN``, ``hf auth login``). The endpoint (``HF_ENDPOINT``) and the cache are read at
call time, not when huggingface_hub was imported. Every failure is one ``ExpoError`` line.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import httpx2

from ..errors import ExpoError
from .hub import REPO_ID, hub_cache_dir
from .remote import RemoteFile, RemoteSpec, http_error

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# what a build reads besides the shards (source.checkpoint, source.vocab, source.chat_template)
SMALL_FILES = (
    INDEX_NAME,
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
BUILD_PATTERNS = ("*.safetensors", *SMALL_FILES)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

T = TypeVar("T")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def timeout() -> float:
    """Seconds without a byte before a transfer counts as failed (huggingface_hub's own setting)."""
    try:
        return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT", "10"))
    except ValueError:
        raise ExpoError("HF_HUB_DOWNLOAD_TIMEOUT must be a number of seconds") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub(what: str, fn: Callable[[], T]) -> T:
    """Call huggingface_hub, turning what it raises into one line that names ``what``."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return fn()
    except OfflineModeIsEnabled:
        raise ExpoError(f"{what}: HF_HUB_OFFLINE is set, and this needs the hub") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        raise http_error(what, status) from None
    except (httpx2.TransportError, OSError) as e:
        raise ExpoError(f"{what}: cannot reach the hub at {endpoint()}: {e}", exit_code=1) from None


def _check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id) or repo_id.startswith((".", "/", "~")):
        raise ExpoError(f"{repo_id}: not a Hugging Face repo id (org/name)")


def list_repo(repo_id: str, revision: str = "main") -> tuple[str, list[str]]:
    """The commit ``revision`` points at, and the repo's files at that commit."""
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    if _offline():
        raise ExpoError(f"{repo_id}: HF_HUB_OFFLINE is set, and this needs the hub")
    info = _hub(repo_id, lambda: HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision))
    if not info.sha or not COMMIT.match(info.sha):
        raise ExpoError(f"{repo_id}: the hub named no commit for {revision}", exit_code=1)
    return info.sha, [s.rfilename for s in info.siblings or []]


def weight_files(repo_id: str, files: list[str]) -> str:
    """``INDEX_NAME`` or ``SINGLE_NAME``, whichever the repo ships; refuses pickle-only repos."""
    if INDEX_NAME in files:
        return INDEX_NAME
    if SINGLE_NAME in files:
        return SINGLE_NAME
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ExpoError(
            f"{repo_id}: only pickle weights ({pickles[0]}); expo-gguf never unpickles. "
            "Use a repo (or a revision) that ships safetensors"
        )
    raise ExpoError(f"{repo_id}: no {INDEX_NAME} or {SINGLE_NAME} on the hub")


def download(repo_ids: list[str], revision: str = "main") -> list[Path]:
    """Each repo's build files into the HF cache (huggingface_hub's progress bars); returns the
    snapshot folders. Every repo is listed and checked before a byte is downloaded."""
    from huggingface_hub import snapshot_download

    commits = []
    for repo_id in repo_ids:
        commit, files = list_repo(repo_id, revision)
        weight_files(repo_id, files)
        commits.append(commit)
    paths = []
    for repo_id in repo_ids:
        path = _hub(
            repo_id,
            lambda r=repo_id: snapshot_download(
                r,
                revision=revision,
                allow_patterns=list(BUILD_PATTERNS),
                cache_dir=hub_cache_dir(),
                endpoint=endpoint(),
            ),
        )
        paths.append(Path(path))
    return paths


@dataclass(frozen=True)
class RemoteRepo:
    """A repo opened for streaming: its small files in a temporary folder, its shards by name."""

    repo_id: str
    revision: str  # the commit, pinned: every request names it
    root: Path  # the small files (config, tokenizer, index); removed when the process ends
    weights: str  # INDEX_NAME or SINGLE_NAME
    shards: dict[str, RemoteSpec]


def _auth() -> tuple[tuple[str, str], ...]:
    """The token (HF_TOKEN, or `hf auth login`'s) for requests to the hub; httpx drops it when a
    redirect leaves the hub's host (the CDN's signed URLs need none)."""
    from huggingface_hub.utils import build_hf_headers

    auth = build_hf_headers().get("authorization")
    return (("authorization", auth),) if auth else ()


def _shard_names(root: Path, weights: str, repo_id: str) -> list[str]:
    if weights == SINGLE_NAME:
        return [SINGLE_NAME]
    try:
        weight_map = json.loads((root / INDEX_NAME).read_text("utf-8")).get("weight_map")
    except (ValueError, OSError, AttributeError):
        raise ExpoError(f"{repo_id}/{INDEX_NAME}: not a valid shard index") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ExpoError(f"{repo_id}/{INDEX_NAME}: no weight_map")
    names = []
    for shard in weight_map.values():
        p = PurePosixPath(shard) if isinstance(shard, str) else None
        if p is None or not shard or p.is_absolute() or ".." in p.parts or "\\" in shard:
            raise ExpoError(f"{repo_id}/{INDEX_NAME}: shard path {shard!r} leaves the repo")
        names.append(shard)
    return list(dict.fromkeys(names))


def open_remote(repo_id: str) -> RemoteRepo:
    """List the repo, pin its commit, fetch its small files and every shard's size, sha256 and URL."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    commit, files = list_repo(repo_id)
    weights = weight_files(repo_id, files)
    root = Path(tempfile.mkdtemp(prefix="expo-gguf-remote-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name in SMALL_FILES:
        if name in files:
            _hub(
                f"{repo_id}/{name}",
                lambda n=name: hf_hub_download(repo_id, n, revision=commit, local_dir=root, endpoint=endpoint()),
            )
    shards = {}
    for name in _shard_names(root, weights, repo_id):
        label = f"{repo_id}/{name}@{commit[:10]}"
        url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint())
        meta = _hub(label, lambda u=url: get_hf_file_metadata(u, timeout=timeout(), retry_on_errors=True))
        if meta.commit_hash and meta.commit_hash != commit:
            raise ExpoError(f"{label}: the hub served commit {meta.commit_hash}, expected {commit}", exit_code=1)
        if meta.size is None:
            raise ExpoError(f"{label}: the hub gave no size", exit_code=1)
        sha = meta.etag if meta.etag and SHA256.match(meta.etag) else None
        shards[name] = RemoteSpec(label, url, meta.size, sha, _auth())
    return RemoteRepo(repo_id, commit, root, weights, shards)


def session() -> httpx2.Client:
    """huggingface_hub's own HTTP session (its proxies, certificates, user agent), shared by threads."""
    from huggingface_hub import get_session

    return get_session()


class _Reading:
    """A ``RemoteFile`` as a block reader's ``ByteSource``: its ``close`` means "done reading"."""

    alignment = 1

    def __init__(self, file: RemoteFile) -> None:
        self.file = file

    def read_into(self, offset: int, buf: memoryview) -> int:
        return self.file.read_into(offset, buf)

    def close(self) -> None:
        self.file.release()


class RemoteFiles:
    """The shards a build reads from the hub, one ``RemoteFile`` each, opened on first use.

    ``open(path)`` is what ``source.reader.SpanStream`` opens files with; ``finish()`` (after the
    pass) streams every shard to its end and checks its sha256; ``close()`` stops them all, and
    a reader still waiting on one raises at once instead of waiting for the network.
    """

    def __init__(self, specs: dict[Path, RemoteSpec]) -> None:
        self.specs = specs
        self._files: dict[Path, RemoteFile] = {}

    def __contains__(self, path: object) -> bool:
        return path in self.specs

    def _file(self, path: Path) -> RemoteFile:
        if path not in self._files:
            self._files[path] = RemoteFile(session(), self.specs[path], timeout())
        return self._files[path]

    def open(self, path: Path) -> _Reading:
        return _Reading(self._file(path))

    def finish(self) -> None:
        for path in self.specs:
            self._file(path).finish()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
