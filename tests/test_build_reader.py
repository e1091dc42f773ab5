"""The streaming read path: O_DIRECT and buffered reads give the same bytes as a plain read, and
the same files as gguf-py computes from the checkpoints; EINVAL falls back without a word."""

from __future__ import annotations

import errno
import glob
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from expo_gguf.convert.mapping import permute_rows
from expo_gguf.source import reader
from expo_gguf.source.reader import LocalFile, Span, SpanStream

from conftest import Pair, run_cli

T = gguf.GGMLQuantizationType
SMALL_BLOCK = 64 << 10  # many blocks on the tiny pair: spans start and end off the 4 KiB boundary


def takes_o_direct(folder: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / ".o_direct_probe"
    probe.write_bytes(b"\0" * 8192)
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    os.close(fd)
    return True


def _build(pair: Pair, out: Path, *extra: str) -> dict[str, bytes]:
    # f32 maths: _expected computes the single-rounding formula (the bf16 maths have their own tests)
    args = ("--sft", pair.sft, "--rlhf", pair.rlhf, "-q", "q8_0,f16", "--math", "f32", "--outdir", out)
    res = run_cli("build", *args, *extra)
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output.lower() and "O_DIRECT" not in res.output  # a fallback says nothing
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.gguf"))}


class _Recording(LocalFile):
    opened: list[bool] = []

    def __init__(self, path: Path, keep_cache: bool = False) -> None:
        super().__init__(path, keep_cache)
        _Recording.opened.append(self.direct)


@pytest.fixture(scope="module")
def direct_build(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small blocks, O_DIRECT where the filesystem takes it (and checked that it was taken)."""
    from expo_gguf.convert import execute

    out = tmp_path_factory.mktemp("direct")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "BLOCK_BYTES", SMALL_BLOCK)
        mp.setattr(execute, "LocalFile", _Recording)
        _Recording.opened = []
        files = _build(pair, out)
    if takes_o_direct(pair.rlhf):
        assert _Recording.opened and all(_Recording.opened)
    return files


def _expected(pair: Pair, alpha: float = 0.5) -> dict[str, np.ndarray]:
    """theta = rlhf + alpha (rlhf - sft) in float32 from torch's safetensors reader, Q/K permuted."""
    import torch
    from safetensors.torch import load_file

    def load(d: Path) -> dict[str, np.ndarray]:
        out = {}
        for f in glob.glob(f"{d}/*.safetensors"):
            out.update({k: v.to(torch.float32).numpy() for k, v in load_file(f).items()})
        return out

    rlhf, sft = load(pair.rlhf), load(pair.sft)
    a = np.float32(alpha)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    result = {}
    for name, r in rlhf.items():
        x = np.float32(1 + a) * r - a * sft[name]
        if "q_proj" in name or "k_proj" in name:
            x = permute_rows(x, 64)
        result[names.get_name(name, try_suffixes=(".weight",))] = x
    return result


def test_direct_reads_give_gguf_py_bytes(pair, direct_build, tmp_path):
    """Every tensor of both outputs is what gguf-py's quantizers make of the extrapolated weights."""
    expected = _expected(pair)
    for name, data in direct_build.items():
        path = tmp_path / name
        path.write_bytes(data)
        r = gguf.GGUFReader(path)
        for t in r.tensors:
            want = expected[t.name]
            if t.tensor_type != T.F32:
                want = gguf.quants.quantize(want.reshape(-1, want.shape[-1]), t.tensor_type)
            assert np.array_equal(np.asarray(t.data).view(np.uint8).ravel(), want.view(np.uint8).ravel()), t.name


def test_buffered_reads_keep_cache_and_o_direct_refused_give_the_same_files(pair, direct_build, tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "BLOCK_BYTES", SMALL_BLOCK)
    assert _build(pair, tmp_path / "keep", "--keep-cache") == direct_build
    real_open = reader.os.open

    def no_direct(path, flags, *args):  # noqa: ANN001, ANN002, ANN202
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")  # as tmpfs answers
        return real_open(path, flags, *args)

    monkeypatch.setattr(reader.os, "open", no_direct)
    assert _build(pair, tmp_path / "einval", "--force") == direct_build


def test_einval_on_the_first_direct_read_falls_back(pair, direct_build, tmp_path, monkeypatch):
    """Some FUSE and network mounts take the O_DIRECT open and refuse the read."""
    if not takes_o_direct(pair.rlhf):
        pytest.skip("this filesystem takes no O_DIRECT")
    real_open, real_preadv = reader.os.open, reader.os.preadv
    direct_fds: set[int] = set()

    def opening(path, flags, *args):  # noqa: ANN001, ANN002, ANN202
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        else:
            direct_fds.discard(fd)
        return fd

    def reading(fd, buffers, offset):  # noqa: ANN001, ANN202
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(reader.os, "open", opening)
    monkeypatch.setattr(reader.os, "preadv", reading)
    assert _build(pair, tmp_path) == direct_build


@pytest.mark.parametrize("keep_cache", [False, True], ids=["direct", "buffered"])
def test_spans_off_the_alignment_smaller_and_larger_than_a_block(tmp_path, keep_cache):
    """Against a plain read of the same bytes: spans that start and end anywhere, a span of one
    byte and one of none, one larger than a block, a span that goes back, and two files."""
    rng = np.random.default_rng(0)
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for f in files:
        f.write_bytes(rng.integers(0, 256, 300_001, dtype=np.uint8).tobytes())
    a, b = files
    spans = [
        Span(a, 0, 1),
        Span(a, 1, 4095),
        Span(a, 4096, 0),
        Span(a, 4097, 10_000),
        Span(a, 14_097, 40_000),  # larger than the 16 KiB block below
        Span(b, 5, 17),
        Span(a, 100, 3),  # back: a new block
        Span(a, 299_990, 11),  # to the last byte of the file
        Span(b, 250_000, 50_001),
    ]
    stream = SpanStream(spans, lambda p: LocalFile(p, keep_cache=keep_cache), block_bytes=16 << 10, depth=2)
    try:
        for s in spans:
            piece = stream.next()
            with open(s.file, "rb") as f:
                f.seek(s.offset)
                assert bytes(piece.data) == f.read(s.nbytes), s
            piece.release()
    finally:
        stream.close()


def test_a_span_past_the_end_of_the_file_is_a_truncated_shard(tmp_path):
    f = tmp_path / "short.bin"
    f.write_bytes(b"x" * 5000)
    stream = SpanStream([Span(f, 0, 100), Span(f, 9000, 100)], LocalFile, block_bytes=4096)
    try:
        assert bytes(stream.next().data) == b"x" * 100
        with pytest.raises(reader.ExpoError, match=r"short\.bin: truncated shard: wanted 908 bytes at 8192, got 0"):
            stream.next()
    finally:
        stream.close()
