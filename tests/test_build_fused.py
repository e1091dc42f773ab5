"""The compiled pass (convert.fused, quant.q8_0_c) writes the numpy path's bits: every value, every
rounding, every permuted row, and so the same files through the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from expo_gguf.convert import execute
from expo_gguf.convert.extrapolate import bf16_delta, bf16_step, extrapolate, widen
from expo_gguf.convert.fused import expo_bf16_rows
from expo_gguf.convert.mapping import permute_rows
from expo_gguf.errors import ExpoError

from conftest import Pair, run_cli

ALPHAS = (0.5, 0.3, -1.0, 0.0, 2.75, 1e-3)


def _bf16_pair(rows: int, cols: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Stored bf16 bits of two close checkpoints over many magnitudes, with zeros, -0.0, subnormals
    and values near the top of the range (the result overflows there: reported, not hidden)."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-30, 30, (rows, 1))
    r = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    s = r + (rng.standard_normal((rows, cols)) * scale * 0.01).astype(np.float32)
    r[0, :8], s[0, :8] = 0.0, -0.0
    r[1, :8] = np.float32(1e-39) * np.arange(8)  # subnormal
    s[1, 8:16] = -np.float32(1e-40) * np.arange(8)
    r[2, :4], s[2, :4] = 3.3e38, -3.3e38  # 1.5 * rlhf + 0.5 * |sft| overflows
    return tuple((x.view(np.uint32) >> 16).astype(np.uint16) for x in (r, s))  # type: ignore[return-value]


def _numpy(r16: np.ndarray, s16: np.ndarray, alpha: float, math: str) -> np.ndarray:
    r, s = (widen(x.reshape(-1), "BF16", np.empty(x.size, np.float32)) for x in (r16, s16))
    with np.errstate(all="ignore"):
        if math == "bf16":
            return bf16_step(r, bf16_delta(r, s, s.copy()), alpha, np.empty_like(r)).reshape(r16.shape)
        return extrapolate(r, s, alpha).reshape(r16.shape)


@pytest.mark.parametrize("math", ["bf16", "f32"])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_fused_pass_equals_numpy_bit_for_bit(math, alpha):
    r, s = _bf16_pair(64, 96)
    want = _numpy(r, s, alpha, math)
    out = np.full(r.size + 7, np.nan, np.float32)  # a larger reused buffer, as the build's
    got, amax = expo_bf16_rows(r.reshape(-1), s.reshape(-1), 64, None, alpha, math, out)
    assert got.shape == (r.size,)
    assert np.array_equal(got.view(np.uint32), want.reshape(-1).view(np.uint32))
    assert np.isfinite(amax) == np.isfinite(want).all()
    if math == "bf16" or alpha >= 0.3:  # rlhf - sft overflows in bf16; (1 + alpha) * rlhf in f32
        assert not np.isfinite(amax)  # the overflow row is reported
    rows = np.isfinite(want).all(axis=1)  # the largest magnitude of the finite rows alone
    _, finite = expo_bf16_rows(r[rows].reshape(-1), s[rows].reshape(-1), int(rows.sum()), None, alpha, math, out)
    assert finite == np.abs(want[rows]).max()


@pytest.mark.parametrize("rope_rows", [2, 8, 32])
def test_fused_pass_permutes_q_k_rows_as_llama_cpp(rope_rows):
    r, s = _bf16_pair(64, 40, seed=5)
    want = permute_rows(_numpy(r, s, 0.5, "bf16"), rope_rows)
    got, _ = expo_bf16_rows(r.reshape(-1), s.reshape(-1), 64, rope_rows, 0.5, "bf16", np.empty(r.size, np.float32))
    assert np.array_equal(got.view(np.uint32), want.reshape(-1).view(np.uint32))


@pytest.mark.parametrize("bits", [0x7FC0, 0xFF80, 0x7F80])  # a quiet NaN, -inf, +inf
def test_fused_pass_reports_nan_and_inf_inputs(bits):
    r, s = _bf16_pair(8, 32)
    r[2] = s[2] = 0x3F80  # no overflow of its own: only the poisoned value is not finite
    (r if bits != 0xFF80 else s)[3, 5] = bits
    _, amax = expo_bf16_rows(r.reshape(-1), s.reshape(-1), 8, None, 0.5, "bf16", np.empty(r.size, np.float32))
    assert not np.isfinite(amax) and not np.isfinite(_numpy(r, s, 0.5, "bf16")).all()


def _build(pair: Pair, out: Path, *extra: str) -> dict[str, bytes]:
    args = ("--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", out)
    res = run_cli("build", *args, *extra)
    assert res.exit_code == 0, res.output
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.gguf"))}


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [("-q", "q8_0,f16,f32", "--alpha", "0.5,0.3"), ("-q", "q8_0,f32", "--math", "f32")],
    ids=["bf16-two-alphas", "f32"],
)
def test_compiled_build_writes_the_numpy_builds_files(pair, tmp_path, monkeypatch, extra):
    used, calls = [], []
    real = execute.compiled_kernels

    def spy():  # noqa: ANN202
        used.append(real())
        if used[-1] is not None:  # count the fused loop's calls: the tiny pair is stored in bf16
            fused = used[-1].expo_bf16_rows
            used[-1].expo_bf16_rows = lambda *a: calls.append(1) or fused(*a)
        return used[-1]

    monkeypatch.setattr(execute, "compiled_kernels", spy)
    monkeypatch.setenv("EXPO_GGUF_KERNELS", "numpy")
    numpy_files = _build(pair, tmp_path / "numpy", *extra)
    assert used and all(u is None for u in used)
    used.clear()
    monkeypatch.setenv("EXPO_GGUF_KERNELS", "c")
    compiled_files = _build(pair, tmp_path / "c", *extra)
    assert used and all(u is not None for u in used) and calls  # each path was taken
    assert len(numpy_files) == (6 if "--alpha" in extra else 2)
    assert compiled_files == numpy_files


def test_kernels_variable_chooses_the_path(monkeypatch):
    """Unset, the compiled kernels (they are built here: setup.py); numpy or c ask for one."""
    monkeypatch.delenv("EXPO_GGUF_KERNELS", raising=False)
    assert execute.compiled_kernels() is not None
    monkeypatch.setenv("EXPO_GGUF_KERNELS", "numpy")
    assert execute.compiled_kernels() is None
    monkeypatch.setenv("EXPO_GGUF_KERNELS", "numba")
    with pytest.raises(ExpoError, match="EXPO_GGUF_KERNELS=numba: expected c or numpy"):
        execute.compiled_kernels()


def test_an_install_without_the_kernels_takes_numpys_path(pair, tmp_path, monkeypatch):
    """No C compiler at install time: the build runs, on numpy; asking for c is one line."""
    for name in ("expo_gguf.quant.q8_0_c", "expo_gguf.convert.fused"):
        monkeypatch.setitem(sys.modules, name, None)  # their import raises ImportError, as without the .so
    monkeypatch.delenv("EXPO_GGUF_KERNELS", raising=False)
    assert execute.compiled_kernels() is None
    assert _build(pair, tmp_path / "numpy", "-q", "q8_0")
    monkeypatch.setenv("EXPO_GGUF_KERNELS", "c")
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", tmp_path / "c")
    assert res.exit_code != 0
    assert res.output.count("\n") == 1 and "the compiled kernels are not installed" in res.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_kernels_refuse_buffers_of_the_wrong_size():
    from expo_gguf.convert import _fused
    from expo_gguf.quant import _q8_0

    r = np.zeros(64, np.uint16)
    with pytest.raises(ValueError, match="rows x cols"):
        _fused.expo_bf16(r, r[:32], np.arange(8), 8, 0.5, True, np.empty(64, np.float32))
    with pytest.raises(ValueError, match="rows x cols"):  # out too small
        _fused.expo_bf16(r, r, np.arange(8), 8, 0.5, True, np.empty(63, np.float32))
    with pytest.raises(ValueError, match="out of range"):
        _fused.expo_bf16(r, r, np.arange(8) + 1, 8, 0.5, True, np.empty(64, np.float32))
    with pytest.raises(ValueError, match="whole number of blocks"):
        _q8_0.q8_0(np.zeros(48, np.float32), np.empty(34, np.uint8), np.empty(1, np.float32))
    with pytest.raises(ValueError, match="whole number of blocks"):
        _q8_0.q8_0(np.zeros(64, np.float32), np.empty(34, np.uint8), np.empty(2, np.float32))
