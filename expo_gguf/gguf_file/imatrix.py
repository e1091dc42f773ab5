"""Importance matrix files, as llama.cpp's ``llama-imatrix`` writes and ``llama-quantize`` reads them.

The GGUF format (llama.cpp's default since 2025): ``general.type`` = ``imatrix``, the string array
``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32), and per weight
matrix two F32 tensors, ``<name>.in_sum2`` (ne ``[n_in, n_mat]``: the raw sums of the squared
input activations per input column) and ``<name>.counts`` (ne ``[1, n_mat]``: the tokens summed).
The legacy ``.dat``: an int32 entry count, then per entry its name, ``ncall`` and the values
``sum / count * ncall``, then the chunk count and the dataset name. Both are read the way
``common_imatrix_load`` reads them; only the GGUF format is written.

Here rather than in ``quant`` because two stages use it: ``measure.imatrix`` writes it and the
quantizer reads it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .._fs import part_path
from ..errors import ExpoError

KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUMS, COUNTS = ".in_sum2", ".counts"


@dataclass
class Imatrix:
    """Per weight matrix: ``sums`` shaped ``(n_mat, n_in)`` and ``counts`` shaped ``(n_mat,)``."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat: ``sums`` already hold means x ncall

    def importance(self) -> dict[str, np.ndarray]:
        """What ``llama-quantize`` hands ``llama_model_quantize``: the mean squared activation per
        input column (1 where a matrix saw no token), flattened over its matrices."""
        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 1.0)
            out[name] = np.ascontiguousarray(means, dtype=np.float32).reshape(-1)
        return out

    @property
    def dataset(self) -> str:
        return self.datasets[0] if self.datasets else ""


@dataclass(frozen=True)
class ImatrixInput:
    """An importance matrix as the quantizer takes it, with the file name its outputs record."""

    data: Imatrix
    file: str


def load_imatrix(path: Path) -> ImatrixInput:
    return ImatrixInput(read_imatrix(path), str(path))


def write_imatrix(path: Path, im: Imatrix) -> None:
    """Write ``im`` as llama.cpp's GGUF imatrix, atomically (a ``.part`` renamed into place)."""
    tmp = part_path(path)
    try:
        w = gguf.GGUFWriter(tmp, arch="", use_temp_file=False)
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
        w.add_string(KEY_TYPE, "imatrix")
        w.add_array(KEY_DATASETS, im.datasets)
        w.add_uint32(KEY_CHUNK_COUNT, im.chunk_count)
        w.add_uint32(KEY_CHUNK_SIZE, im.chunk_size)
        for name in sorted(im.sums):  # llama-imatrix's order: sorted names
            w.add_tensor(name + SUMS, np.ascontiguousarray(im.sums[name], dtype=np.float32))
            w.add_tensor(name + COUNTS, np.ascontiguousarray(im.counts[name], dtype=np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # checked before the run; a folder removed or a disk full since
            raise ExpoError(f"cannot write {path}: {e.strerror or e}", exit_code=1) from None
        raise


def read_imatrix(path: Path) -> Imatrix:
    """Either format; anything else or a damaged file is one ``ExpoError`` line."""
    if not path.is_file():
        raise ExpoError(f"{path}: no such imatrix file")
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
    except ExpoError:
        raise
    except (ValueError, KeyError, IndexError, struct.error, OSError) as e:
        raise ExpoError(f"{path}: not a readable imatrix file ({e})") from None


def _read_gguf(path: Path) -> Imatrix:
    r = gguf.GGUFReader(path)
    fields = r.fields

    def scalar(key: str) -> int:
        f = fields.get(key)
        return int(f.parts[f.data[0]][0]) if f is not None else 0

    if KEY_CHUNK_COUNT not in fields or KEY_DATASETS not in fields or KEY_CHUNK_SIZE not in fields:
        kind = fields.get(KEY_TYPE)
        what = bytes(kind.parts[kind.data[0]]).decode() if kind is not None else "no general.type"
        raise ExpoError(f"{path}: a GGUF but not an importance matrix ({what}, no imatrix.* metadata)")
    ds = fields[KEY_DATASETS]
    im = Imatrix(
        datasets=[bytes(ds.parts[i]).decode("utf-8", "replace") for i in ds.data],
        chunk_count=scalar(KEY_CHUNK_COUNT),
        chunk_size=scalar(KEY_CHUNK_SIZE),
    )
    tensors = {t.name: t for t in r.tensors}
    for tname, t in tensors.items():
        if not tname.endswith(SUMS):
            continue
        name = tname[: -len(SUMS)]
        c = tensors.get(name + COUNTS)
        if c is None:
            raise ExpoError(f"{path}: {name} has sums but no counts")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or c.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ExpoError(f"{path}: sums and counts for {name} must be F32")
        n_in = int(t.shape[0])
        sums = np.array(t.data, dtype=np.float32).reshape(-1, n_in)
        counts = np.rint(np.array(c.data, dtype=np.float32).reshape(-1)).astype(np.int64)
        if len(counts) != len(sums):
            raise ExpoError(f"{path}: {name} has {len(sums)} matrices of sums but {len(counts)} counts")
        im.sums[name], im.counts[name] = sums, counts
    if not im.sums:
        raise ExpoError(f"{path}: the importance matrix holds no entries")
    return im


def _read_legacy(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > 1_000_000:
        raise ExpoError(f"{path}: neither a GGUF nor a legacy .dat importance matrix")
    im = Imatrix(legacy=True)
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise ExpoError(f"{path}: damaged legacy imatrix (entry name of {length} bytes)")
        name = data[pos : pos + length].decode("utf-8")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise ExpoError(f"{path}: damaged legacy imatrix (entry {name!r} truncated)")
        im.sums[name] = np.frombuffer(data, np.float32, nval, pos).reshape(1, nval).copy()
        im.counts[name] = np.array([ncall], np.int64)
        pos += 4 * nval
    if pos + 4 <= len(data):
        (im.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if length > 0:
                im.datasets.append(data[pos : pos + length].decode("utf-8", "replace"))
    return im
