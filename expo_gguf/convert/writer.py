"""Streaming GGUF output: gguf-py writes the header, we append tensor data a chunk at a time.

gguf-py's ``GGUFWriter`` wants each tensor whole; a 7B embedding in F32 is half a gigabyte per
output, so after it has written header, key/values and tensor infos (its state machine checks the
order) we write the data section ourselves, in the same order and alignment, hashing as we go.
Files are written under ``NAME.part`` and renamed only once read back and checked.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gguf
import numpy as np

from .._fs import WRITEBACK_STEP, WritebackDropper, drop_cached_file, part_path
from ..errors import ExpoError
from ..gguf_file.header import read_gguf_header
from ..quant.types import nbytes
from .metadata import start_writer
from .plan import Output, Plan


class GGUFStream:
    """One output file in the making; tensors must arrive whole and in plan order."""

    def __init__(self, plan: Plan, out: Output) -> None:
        assert out.types is not None
        self.out, self.plan = out, plan
        self.tmp = part_path(out.path)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        w = start_writer(plan, out, out.types, self.tmp)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        self._w, self._f = w, w.fout[0]
        self._f.flush()
        self._hash = hashlib.sha256()
        self._keep_cache = plan.request.keep_cache
        self._dropper = None if self._keep_cache else WritebackDropper(self._f.fileno())
        self._next_step = WRITEBACK_STEP
        try:
            with open(self.tmp, "rb") as head:
                self._hash.update(head.read(self._f.tell()))
            self._align = w.data_alignment
            self._pad(self._f.tell())
            for extra in plan.extra:  # small and known now: written ahead of the streamed tensors
                self._emit(memoryview(np.ascontiguousarray(extra.data, np.float32)).cast("B"))
                self._pad(extra.data.nbytes)
        except BaseException:
            self._stop_dropper()
            raise
        self._sizes = [nbytes(t, j.shape) for t, j in zip(out.types, plan.tensors)]
        self._index, self._written = 0, 0

    def _pad(self, n: int) -> None:
        pad = -n % self._align
        if pad:
            self._emit(memoryview(bytes(pad)))

    def _emit(self, data: memoryview) -> None:
        try:
            self._f.write(data)
        except OSError as e:  # name the output, not the folder, in the one-line message
            raise OSError(e.errno, e.strerror, str(self.out.path)) from None
        self._hash.update(data)
        if self._dropper is not None and self._f.tell() >= self._next_step:
            self._f.flush()
            self._dropper.written(self._f.tell())
            self._next_step = self._f.tell() + WRITEBACK_STEP

    def write(self, chunk: np.ndarray) -> None:
        """Append part of the current tensor; closes it when its last byte arrives."""
        data = memoryview(np.ascontiguousarray(chunk)).cast("B")
        self._emit(data)
        self._written += data.nbytes
        want = self._sizes[self._index]
        if self._written > want:
            raise AssertionError(f"{self.plan.tensors[self._index].gguf_name}: {self._written} bytes > {want}")
        if self._written == want:
            self._pad(want)
            self._index, self._written = self._index + 1, 0

    def finish(self) -> str:
        """Close and check the file as llama.cpp will see it; returns its sha256. It stays at
        ``self.tmp``: the build renames all outputs together once every one is done."""
        if self._index != len(self._sizes):
            raise AssertionError(f"{self.tmp}: {self._index} of {len(self._sizes)} tensors written")
        self._f.flush()
        self._stop_dropper()
        os.fsync(self._f.fileno())
        self._w.close()
        verify(self.tmp, self.plan)
        if not self._keep_cache:
            drop_cached_file(self.tmp)  # clean after the fsync: every page goes, the header just read too
        return self._hash.hexdigest()

    def _stop_dropper(self) -> None:
        if self._dropper is not None:
            self._dropper.close()
            self._dropper = None

    def abort(self) -> None:
        self._stop_dropper()
        self._w.close()
        self.tmp.unlink(missing_ok=True)


def verify(path: Path, plan: Plan) -> None:
    """Read the written header back (our validating walk: every bound checked) and check what
    must hold for llama.cpp; milliseconds, so every output gets it."""
    try:
        header = read_gguf_header(path)
    except ExpoError as e:
        raise ExpoError(f"the written file does not read back: {e}", exit_code=1) from None
    kv = header.values
    problems = []
    if len(header.tensors) != len(plan.tensors) + len(plan.extra):
        problems.append(f"{len(header.tensors)} tensors, expected {len(plan.tensors) + len(plan.extra)}")
    if kv.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) != plan.vocab.chat_template:
        problems.append("chat template differs")
    if kv.get(gguf.Keys.Tokenizer.EOS_ID) != plan.vocab.special_ids.get("eos"):
        problems.append("eos id differs")
    if len(kv.get(gguf.Keys.Tokenizer.LIST) or []) != plan.hparams.vocab_size:
        problems.append("token count differs")
    if problems:
        raise ExpoError(f"{path}: written file is wrong: {'; '.join(problems)}", exit_code=1)
