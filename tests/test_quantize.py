"""Our block quantizers write exactly what gguf-py's numpy reference (and so convert_hf_to_gguf) writes."""

import gguf
import numpy as np
import pytest

from expo_gguf.quant.ggml import row_quantizer
from expo_gguf.quant.types import QUANTS, parse_quants, tensor_type

T = gguf.GGMLQuantizationType
BLOCK_TYPES = [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_bytes_equal_gguf_py_reference(qtype):
    rng = np.random.default_rng(1)
    rows = (rng.normal(0, 0.02, (96, 1024))).astype(np.float32)
    rows[0] = np.round(rows[0] * 127 / 0.05) * 0.05 / 127  # exact ties for the scaled rounding
    rows[1] = 0.0
    rows[2, ::7] = 1e4  # outliers within a block
    fast = row_quantizer(qtype)
    assert fast is not None, "llama-cpp-python's ggml libraries should be loadable here"
    expected = gguf.quants.quantize(rows, qtype).view(np.uint8).reshape(rows.shape[0], -1)
    assert np.array_equal(fast(rows), expected)


def test_policy_keeps_norms_f32_and_falls_back_for_odd_rows():
    q8 = QUANTS["q8_0"]
    assert tensor_type(q8, "blk.0.attn_norm.weight", (4096,)) == (T.F32, None)
    assert tensor_type(q8, "blk.0.attn_q.weight", (4096, 4096)) == (T.Q8_0, None)
    qtype, warning = tensor_type(q8, "x.weight", (8, 100))
    assert qtype == T.F16 and "100" in warning


def test_parse_quants_is_case_insensitive_ordered_and_unique():
    assert [q.name for q in parse_quants("Q8_0, q4_k_m,q8_0")] == ["q8_0", "q4_k_m"]


def _q8_0_cases() -> np.ndarray:
    """Hand-picked blocks (exact ties at several scales, zeros and -0.0, one outlier, values just
    below a tie, subnormals, the largest floats) and random rows over twelve orders of magnitude."""
    rng = np.random.default_rng(7)
    rows = [rng.normal(0, 10.0 ** rng.uniform(-6, 3), 256) for _ in range(40)]
    for amax in (0.05, 1.0, 3.7, 1e-3):
        d = np.float32(amax) / np.float32(127)
        k = rng.integers(-254, 255, 256).astype(np.float32)
        tie = (k / 2) * d  # x * (1/d) lands on or next to k/2, a tie when k is odd
        tie[::32] = amax
        rows += [tie, np.nextafter(tie, np.float32(0))]
    rows.append(np.r_[np.zeros(128), -np.zeros(128)])
    rows.append(np.r_[np.full(31, 1e-3), [1e4]].repeat(8))
    rows.append(rng.normal(0, 1e-40, 256))  # subnormal inputs: d = 0 or 1/d overflows, as in C
    rows.append(np.r_[rng.normal(0, 1, 255), [3.4e38]])
    return np.array(rows, dtype=np.float32)


def _q8_0_quantizers():
    from expo_gguf.quant.q8_0 import quantize_q8_0
    from expo_gguf.quant.q8_0_c import quantize_q8_0_c

    return {"numpy": quantize_q8_0, "c": quantize_q8_0_c}


@pytest.mark.parametrize("impl", ["numpy", "c"])
def test_vectorised_q8_0_equals_ggml_quantize_chunk(impl):
    """quant.q8_0 and quant.q8_0_c (what the build uses for Q8_0) against ggml_quantize_chunk and gguf-py."""
    from expo_gguf.quant.types import quantize_rows

    quantize_q8_0 = _q8_0_quantizers()[impl]

    rows = np.concatenate([_q8_0_cases(), np.random.default_rng(8).normal(0, 0.02, (512, 256)).astype(np.float32)])
    ggml = row_quantizer(T.Q8_0)
    assert ggml is not None, "llama-cpp-python's ggml libraries should be loadable here"
    ours = quantize_q8_0(rows)
    assert np.array_equal(ours, ggml(rows))
    sane = rows[:-514]  # gguf-py divides by zero and overflows on the last two, as C does; compare the rest
    assert np.array_equal(quantize_q8_0(sane), gguf.quants.quantize(sane, T.Q8_0).view(np.uint8).reshape(len(sane), -1))
    if impl == "numpy":
        assert np.array_equal(quantize_rows(rows, T.Q8_0), ours)
