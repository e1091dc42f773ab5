"""A result the output cannot hold is refused, never written: NaN or Inf from the formula, an F16
value past 65504, a Q8_0 or Q4_0 scale past f16's range, a K-quant's input past F16's range. One
line naming the tensor and the alpha, exit 1, nothing left; the compiled kernels and numpy alike."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from test_build_errors import assert_clean_failure

from expo_gguf.quant.types import F16_MAX, overflows, quantize_rows, scales_overflow

from conftest import run_cli

T = gguf.GGMLQuantizationType


def _build(pair, out, *args: str):  # noqa: ANN001, ANN202
    return run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", out, *args)


@pytest.mark.parametrize("kernels", ["c", "numpy"])
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_k_m", "q8_0,f16"])
def test_an_alpha_that_overflows_the_output_is_refused(pair, tmp_path, monkeypatch, kernels, quant):
    monkeypatch.setenv("EXPO_GGUF_KERNELS", kernels)
    out = tmp_path / "models"
    res = _build(pair, out, "--alpha", "1e30", "-q", quant)
    assert_clean_failure(res, out, "alpha 1e+30 gives values up to", code=1)
    line = next(x for x in res.output.splitlines() if x.startswith("error:"))
    assert ".weight (" in line and "use a smaller alpha" in line and ".part" not in line
    assert "ggml_validate_row_data" not in res.output


@pytest.mark.parametrize("kernels", ["c", "numpy"])
def test_the_same_alpha_is_written_where_the_type_holds_it(pair, tmp_path, monkeypatch, kernels):
    """BF16 and F32 hold values of 1e27: the check is per type, not a blanket limit on alpha."""
    monkeypatch.setenv("EXPO_GGUF_KERNELS", kernels)
    res = _build(pair, tmp_path, "--alpha", "1e30", "-q", "bf16,f32")
    assert res.exit_code == 0, res.output
    for path in tmp_path.glob("*.gguf"):
        for t in gguf.GGUFReader(path).tensors:
            assert np.isfinite(gguf.quants.dequantize(t.data.view(np.uint8), t.tensor_type)).all(), (path, t.name)


@pytest.mark.parametrize("kernels", ["c", "numpy"])
def test_nan_in_a_checkpoint_names_tensor_and_alpha(pair_copy, tmp_path, monkeypatch, kernels):
    from test_build_errors import _nan_in_result

    monkeypatch.setenv("EXPO_GGUF_KERNELS", kernels)
    _nan_in_result(pair_copy)
    out = tmp_path / "models"
    res = _build(pair_copy, out, "-q", "f32", "--alpha", "0.3")
    assert_clean_failure(res, out, "NaN or Inf in the result at alpha 0.3", code=1)
    assert "q_proj.weight (blk.0.attn_q.weight)" in res.output


@pytest.mark.parametrize("qtype", [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1])
def test_the_range_check_agrees_with_the_bytes_written(qtype):
    """``overflows`` (from the largest magnitude alone) and ``scales_overflow`` (from the bytes)
    against the quantizers' own output, on either side of each type's limit."""
    rng = np.random.default_rng(1)
    for top in (F16_MAX, 65519.0, 65520.0, 127 * 65504.0, 127 * 65520.0, 8 * 65520.0, 3.39e38, 3.3962e38):
        for sign in (1, -1):
            rows = rng.uniform(-1, 1, (4, 64)).astype(np.float32)
            rows[1, 33] = np.float32(sign * top)
            written = quantize_rows(rows, qtype)
            with np.errstate(invalid="ignore"):
                finite = np.isfinite(gguf.quants.dequantize(written.view(np.uint8), qtype)).all()
            said = overflows(qtype, float(np.abs(rows).max())) or scales_overflow(qtype, written)
            assert said == (not finite), (qtype.name, sign * top)
