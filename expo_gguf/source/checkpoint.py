"""Reading checkpoints: index their safetensors from the headers alone, every offset validated.

Nothing here loads a whole tensor, let alone a shard: the planner needs only headers, and the build
streams the byte ranges these headers name through ``source.reader`` into blocks it owns, so
resident memory stays at the size of those blocks however large the model is (a memory map would
count every touched page in RSS).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import ExpoError
from .hub import resolve_source
from .remote import RemoteSpec, fetch_range
from .remote_repo import open_remote, session, timeout

# safetensors dtype -> the numpy dtype its bytes are read as. BF16 is read as uint16 and
# widened by shifting; the rest are read as themselves.
DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
HEADER_PROBE = 1 << 18  # the first request for a remote header: most headers fit (Mistral 7B: ~25 KiB)


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: absolute offset in its shard, shape as stored (rows first)."""

    name: str
    file: Path
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def row_elems(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else math.prod(self.shape)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as planned from: its files, config and tensor table, no weights."""

    path: Path
    repo_id: str | None
    config: dict
    tensors: dict[str, TensorRef] = field(repr=False)
    revision: str | None = None  # the commit, for a repo from the hub or the HF cache
    remote: dict[Path, RemoteSpec] = field(default_factory=dict, repr=False)  # shard -> where on the hub

    @property
    def label(self) -> str:
        return self.repo_id or self.path.name

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def same_files(self, other: Checkpoint) -> bool:
        """The same folder, or shards that are the same files (the HF cache's blobs are hard links);
        on the hub, the same repo at the same commit."""
        if self.remote or other.remote:
            return (self.repo_id, self.revision) == (other.repo_id, other.revision)
        if self.path.resolve() == other.path.resolve():
            return True

        def inodes(c: Checkpoint) -> set[tuple[int, int]]:
            return {(s.st_dev, s.st_ino) for s in (f.stat() for f in {t.file for t in c.tensors.values()})}

        try:
            return bool(self.tensors) and inodes(self) == inodes(other)
        except OSError:
            return False


def read_json(path: Path, what: str, required: bool = True) -> dict:
    """A JSON object from a checkpoint file; a missing optional file reads as ``{}``."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        if not required:
            return {}
        raise ExpoError(f"{path}: missing ({what})") from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurd nesting
        raise ExpoError(f"{path}: not valid JSON ({what}): {str(e)[:100]}") from None
    if not isinstance(data, dict):
        raise ExpoError(f"{path}: expected a JSON object ({what})")
    return data


def _shard_path(root: Path, written: object) -> Path:
    """Judge the path as written in the index, not where a symlink (HF cache blobs) resolves."""
    if not isinstance(written, str) or not written:
        raise ExpoError(f"{root / INDEX_NAME}: a shard name is not a string: {written!r}")
    p = PurePosixPath(written)
    if p.is_absolute() or ".." in p.parts or "\\" in written:
        raise ExpoError(f"{root / INDEX_NAME}: shard path {written!r} leaves the checkpoint directory")
    return root / p


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate one safetensors header so later reads can trust every offset."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = _header_length(path, head, size)
            raw = f.read(n)
    except FileNotFoundError:
        raise ExpoError(f"{path}: missing shard") from None
    except IsADirectoryError:
        raise ExpoError(f"{path}: is a directory, expected a safetensors shard") from None
    return parse_header(path, raw, n, size)


def _header_length(path: Path | str, head: bytes, size: int) -> int:
    if len(head) < 8:
        raise ExpoError(f"{path}: truncated safetensors file ({size} bytes)")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES or n + 8 > size:
        raise ExpoError(f"{path}: corrupt safetensors header (header length {n}, file {size} bytes)")
    return n


def read_remote_header(spec: RemoteSpec, file: Path) -> dict[str, TensorRef]:
    """The same header from the hub: a range request for the first bytes, another if it is longer."""
    with_head = fetch_range(session(), spec, 0, min(spec.size, HEADER_PROBE), timeout())
    n = _header_length(spec.label, with_head, spec.size)
    raw = with_head[8 : 8 + n]
    if len(raw) < n:
        raw += fetch_range(session(), spec, 8 + len(raw), 8 + n, timeout())
    return parse_header(file, raw, n, spec.size, spec.label)


def parse_header(path: Path, raw: bytes, n: int, size: int, label: str | None = None) -> dict[str, TensorRef]:
    """A header's JSON (``n`` bytes after the length) checked against a file of ``size`` bytes."""
    where = label or path
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ExpoError(f"{where}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise ExpoError(f"{where}: corrupt safetensors header (not an object)")
    base, data_len = 8 + n, size - 8 - n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        refs[name] = _tensor_ref(path, name, info, base, data_len, where)
    spans = sorted((r.offset, r.offset + r.nbytes, r.name) for r in refs.values() if r.nbytes)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise ExpoError(f"{where}: tensors {a} and {b} overlap in the file")
    return refs


def _tensor_ref(
    path: Path, name: str, info: object, base: int, data_len: int, where: Path | str | None = None
) -> TensorRef:
    where = where or path
    bad = f"{where}: tensor {name!r}"
    if not isinstance(info, dict):
        raise ExpoError(f"{bad} has a corrupt header entry")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ExpoError(f"{bad} has dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ExpoError(f"{bad} has an invalid shape {shape!r}")
    if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
        raise ExpoError(f"{bad} has invalid data_offsets {offs!r}")
    begin, end = offs
    if not 0 <= begin <= end:
        raise ExpoError(f"{bad} has invalid data_offsets {offs!r}")
    if end > data_len:
        raise ExpoError(
            f"{where}: truncated shard: tensor {name!r} ends at byte {base + end}, file has {base + data_len}"
        )
    if end - begin != math.prod(shape) * DTYPES[dtype].itemsize:
        raise ExpoError(f"{bad}: shape {shape} {dtype} does not match its {end - begin} bytes")
    return TensorRef(name, path, base + begin, end - begin, dtype, tuple(shape))


def load_checkpoint(spec: str, what: str = "a checkpoint", remote: bool = False) -> Checkpoint:
    """Resolve, then index every tensor of a checkpoint from its headers alone (``what``: the
    option it came from, for messages).

    ``remote``: ``spec`` is a repo id on the hub; the small files are fetched, the shards stay
    there and only their headers are read (by range requests).
    """
    sources: dict[Path, RemoteSpec] = {}
    if remote:
        repo = open_remote(spec)
        root, repo_id, revision = repo.root, repo.repo_id, repo.revision
        sources = {root / name: s for name, s in repo.shards.items()}
    else:
        root, repo_id = resolve_source(spec, what)
        revision = root.name if repo_id and root.parent.name == "snapshots" else None
    pickles = [p.name for p in root.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    config = read_json(root / "config.json", "model config")
    index_path = root / INDEX_NAME
    if index_path.exists():
        weight_map = read_json(index_path, "shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ExpoError(f"{index_path}: no weight_map")
        shards: dict[Path, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(_shard_path(root, shard), []).append(name)
    elif (root / SINGLE_NAME).exists() or root / SINGLE_NAME in sources:
        shards = {root / SINGLE_NAME: []}
    elif pickles:
        raise ExpoError(
            f"{root}: only pickle weights ({pickles[0]}); expo-gguf never unpickles. "
            "Download the safetensors files instead (most repos ship them)"
        )
    else:
        raise ExpoError(f"{root}: no {INDEX_NAME} or {SINGLE_NAME} found")
    tensors: dict[str, TensorRef] = {}
    for shard, names in shards.items():
        refs = read_remote_header(sources[shard], shard) if remote else read_header(shard)
        missing = [n for n in names if n not in refs]
        if missing:
            raise ExpoError(f"{index_path}: names {missing[0]!r} in {shard.name}, which does not hold it")
        tensors.update(refs if not names else {n: refs[n] for n in names})
    return Checkpoint(root, repo_id, config, tensors, revision, sources)
