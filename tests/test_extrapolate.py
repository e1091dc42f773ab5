"""The ExPO arithmetic on its own: the identities the method promises, and a hand-worked case."""

import numpy as np
import pytest

from expo_gguf.build.extrapolate import extrapolate, widen


@pytest.fixture
def weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    sft = rng.normal(0, 0.02, 4096).astype(np.float32)
    # include extremes a naive rlhf + a*(rlhf - sft) rounds away from: tiny next to large values
    sft[:4] = [1e-30, 3.0e4, -7.5e-8, 0.0]
    rlhf = sft + rng.normal(0, 0.001, 4096).astype(np.float32)
    rlhf[:4] = [2.0e4, 1e-30, 6.1e-5, -0.0]
    return rlhf, sft


def test_alpha_zero_is_rlhf_exactly(weights):
    rlhf, sft = weights
    assert np.array_equal(extrapolate(rlhf, sft, 0.0), rlhf)


def test_alpha_minus_one_is_sft_exactly(weights):
    rlhf, sft = weights
    assert np.array_equal(extrapolate(rlhf, sft, -1.0), sft)


def test_hand_computed_case():
    rlhf = np.float32([2.0, -1.0, 0.5])
    sft = np.float32([1.0, 1.0, 0.5])
    # 2 + 0.5*(2-1) = 2.5 ; -1 + 0.5*(-1-1) = -2 ; 0.5 + 0.5*0 = 0.5
    out = extrapolate(rlhf, sft, 0.5)
    assert out.dtype == np.float32
    assert out.tolist() == [2.5, -2.0, 0.5]


def test_in_place_matches_pure(weights):
    rlhf, sft = weights
    expected = extrapolate(rlhf, sft, 0.3)
    buf = rlhf.copy()
    assert np.array_equal(extrapolate(buf, sft, 0.3, out=buf), expected)
    # against float64: within a few float32 roundings of the terms (cancellation makes rtol meaningless)
    r64, s64 = rlhf.astype(np.float64), sft.astype(np.float64)
    exact = r64 + 0.3 * (r64 - s64)
    bound = 4 * np.finfo(np.float32).eps * (1.3 * np.abs(r64) + 0.3 * np.abs(s64))
    assert np.all(np.abs(expected - exact) <= bound)


def test_widen_bf16_is_exact():
    values = np.float32([1.0, -2.5, 3.140625, 0.0, -0.0, 65280.0])
    stored = (values.view(np.uint32) >> 16).astype(np.uint16)  # all exactly representable in bf16
    assert np.array_equal(widen(stored, "BF16", np.empty(8, np.float32)), values)
