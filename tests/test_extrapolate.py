"""The ExPO arithmetic on its own: the identities the method promises, a hand-worked case, and the
bf16 rounding and arithmetic of the ExPO authors' torch script against torch and gguf-py."""

import gguf
import numpy as np
import pytest

from expo_gguf.convert.extrapolate import extrapolate, extrapolate_bf16, round_bf16, to_bf16, widen


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


def _f32(*bits: int) -> np.ndarray:
    return np.array(bits, np.uint32).view(np.float32)


# (float32 bits, the bf16 bits round to nearest even gives), picked by hand
ROUNDING = [
    (0x3F800000, 0x3F80),  # 1.0: exact
    (0x3F808000, 0x3F80),  # 1 + half an ulp, a tie: to the even 1.0
    (0x3F818000, 0x3F82),  # 1 + 3 halves of an ulp, a tie: up to the even neighbour
    (0x3F808001, 0x3F81),  # just over the tie: up
    (0x3F807FFF, 0x3F80),  # just under the tie: down
    (0xBF808000, 0xBF80),  # the negative tie: to even, sign kept
    (0x7F7F0000, 0x7F7F),  # the largest finite bf16
    (0x7F7F7FFF, 0x7F7F),  # just under the tie to overflow: the largest finite
    (0x7F7F8000, 0x7F80),  # the tie above the largest finite bf16: odd, so up, to infinity
    (0x7F7FFFFF, 0x7F80),  # float32's largest finite: infinity
    (0xFF7FFFFF, 0xFF80),  # and its negative: -infinity
    (0x00000001, 0x0000),  # the smallest subnormal float32: to zero
    (0x00008000, 0x0000),  # a subnormal tie: to the even zero
    (0x00018000, 0x0002),  # a subnormal tie with an odd kept bit: up
    (0x00010000, 0x0001),  # the smallest bf16 subnormal, exact
    (0x007FFFFF, 0x0080),  # the largest float32 subnormal: up to the smallest normal
    (0x80000000, 0x8000),  # -0.0
    (0x7F800000, 0x7F80),  # +infinity
    (0xFF800000, 0xFF80),  # -infinity
]
NANS = [
    (0x7FC00000, 0x7FC0),  # the quiet NaN
    (0x7F800001, 0x7FC0),  # a signalling NaN whose payload is all in the cut bits: stays NaN, made quiet
    (0x7FFFFFFF, 0x7FFF),  # a full payload that rounding would carry into the sign
    (0xFFFF8000, 0xFFFF),  # negative, at a rounding tie
    (0xFF800001, 0xFFC0),  # negative signalling
]


def test_bf16_rounding_on_hand_picked_values():
    x = _f32(*(b for b, _ in ROUNDING + NANS))
    want = np.array([h for _, h in ROUNDING + NANS], np.uint16)
    assert [hex(v) for v in to_bf16(x)] == [hex(v) for v in want]
    assert np.isnan(widen(to_bf16(x)[len(ROUNDING) :], "BF16", np.empty(len(NANS), np.float32))).all()
    # gguf-py's (ggml's) rounding agrees everywhere, NaNs included
    assert np.array_equal(gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view(np.uint16), want)
    # in place, with a scratch buffer, 2-D: the same
    y = x.copy().reshape(1, -1)
    round_bf16(y, y, np.empty(64, np.uint32))
    assert np.array_equal(y.reshape(-1).view(np.uint32) >> 16, want.astype(np.uint32))


@pytest.mark.reference
def test_bf16_rounding_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    with np.errstate(over="ignore"):  # some of these overflow float32 on purpose
        x = rng.standard_normal(200_000) * 10.0 ** rng.integers(-45, 39, 200_000)
        x = np.concatenate([x.astype(np.float32), _f32(*(b for b, _ in ROUNDING))])
    theirs = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(to_bf16(x), theirs)  # torch writes one canonical NaN, so NaNs are left out


@pytest.mark.reference
@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.1, -1.0, 2.0])
def test_bf16_arithmetic_equals_the_authors_torch_line(alpha):
    """``dpo + alpha * (dpo - sft)`` on bf16 tensors: torch's result bit for bit, including how a
    Python float alpha enters (float32(alpha): rounding it to bf16 first differs at 0.3)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    sft = torch.from_numpy(rng.normal(0, 0.02, 300_000).astype(np.float32)).to(torch.bfloat16)
    dpo = (sft.float() + torch.from_numpy(rng.normal(0, 0.002, 300_000).astype(np.float32))).to(torch.bfloat16)
    # large next to tiny, subnormal, signed zeros, near the largest finite: where roundings show
    inf, nan = float("inf"), float("nan")
    edge = [(3e38, 1e-40), (-2e4, 3e-39), (0.0, -0.0), (1e-38, -1e-38), (65280.0, 65024.0), (-1.5, 1.5)]
    edge += [(inf, 1.0), (1.0, inf), (inf, inf), (nan, 0.5), (0.5, -nan)]  # torch's NaNs are canonical
    sft = torch.cat([sft, torch.tensor([s for _, s in edge], dtype=torch.bfloat16)])
    dpo = torch.cat([dpo, torch.tensor([d for d, _ in edge], dtype=torch.bfloat16)])
    theirs = (dpo + alpha * (dpo - sft)).float().numpy()
    d, s = dpo.float().numpy(), sft.float().numpy()
    with np.errstate(over="ignore", invalid="ignore"):  # 3e38 overflows, inf - inf: in torch as here
        ours = extrapolate_bf16(d, s, alpha)
        once = to_bf16(extrapolate(d, s, alpha))
        a16 = extrapolate_bf16(d, s, float(torch.tensor(alpha, dtype=torch.bfloat16)))  # the scalar in bf16
    assert ours.dtype == np.float32
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)) and np.isnan(ours).sum() >= 3
    ok = ~np.isnan(theirs)
    assert np.array_equal(ours[ok].view(np.uint32), theirs[ok].view(np.uint32))
    assert not np.array_equal(once[ok], to_bf16(ours)[ok])  # it is not the float32 formula rounded once
    if alpha == 0.3:
        assert not np.array_equal(a16[ok], ours[ok])
