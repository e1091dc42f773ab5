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
