"""GPU offload, where llama-cpp-python was built with it (skipped on CPU-only builds, as in CI).

Run on a CUDA machine after `LLAMA_FLAVOR=cuda LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON" make venv`.
Measured on an H200 (CUDA 13, sm_90), GPU against CPU logits, relative RMS: F32 5.1e-4,
F16 1.3e-3, Q8_0 1.1e-2, Q4_K_M 2.8e-2; on an H100 (session 2) the same within 15 %, and the
Llama-3-shaped build F32 4.0e-4, Q8_0 7.7e-3. Where a pytest plugin imports numpy before llama_cpp,
a CUDA build can segfault at model load (see expo_gguf/__init__.py); then run
`python -c "import llama_cpp, pytest; pytest.main(['tests/test_gpu.py'])"`. On that image torch
(its own CUDA libraries) cannot share a process with the CUDA build either (segfault at import),
so the transformers-reference tests run on the CPU build only.
"""

from __future__ import annotations

import re
import time

import llama_cpp
import numpy as np
import pytest

from expo_gguf.runtime.log import capture

from conftest import run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.reference,
    pytest.mark.skipif(
        not llama_cpp.llama_supports_gpu_offload(), reason="llama-cpp-python was built without GPU support"
    ),
]

IDS = [1, 420, 6687, 28781, 3198, 3123, 1247, 28747, 6312, 32000, 420, 6687, 28781, 3198, 3123, 21631, 28747]


def _logits(path, n_gpu_layers: int) -> tuple[np.ndarray, list[str]]:
    with capture() as log:
        llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, n_gpu_layers=n_gpu_layers, verbose=True)
        llm.eval(IDS)
        scores = np.array(llm.scores[: len(IDS)])
        llm.close()
    return scores, log


def _assert_offload_matches_cpu(path, bound: float, label: str) -> None:  # noqa: ANN001
    cpu, _ = _logits(path, 0)
    gpu, log = _logits(path, -1)
    done = re.search(r"offloaded (\d+)/(\d+) layers to GPU", "".join(log))
    assert done and done.group(1) == done.group(2), "".join(log)[-2000:]
    rel = float(np.sqrt(((gpu - cpu) ** 2).mean() / (cpu**2).mean()))
    print(f"{label}: GPU vs CPU relative RMS {rel:.2e}")
    assert rel < bound


@pytest.mark.parametrize("quant,bound", [("F32", 1e-3), ("F16", 1e-2), ("Q8_0", 0.02), ("Q4_K_M", 0.05)])
def test_offloaded_model_computes_what_the_cpu_does(built, quant, bound):
    _assert_offload_matches_cpu(built[quant], bound, quant)


def test_chat_auto_offloads(built):
    t0 = time.perf_counter()
    res = run_cli(
        "chat",
        built["Q4_K_M"],
        "-i",
        "--temp",
        "0",
        "--max-tokens",
        "16",
        "-ngl",
        "auto",
        input="Hello there\n/show\n/exit\n",
    )
    assert res.exit_code == 0, res.output
    assert "layers on GPU" in res.output and "CPU only" not in res.output, res.output
    print(f"chat session on GPU: {time.perf_counter() - t0:.1f} s")


@pytest.fixture(scope="module")
def llama3_built(tmp_path_factory):
    """A Llama-3-shaped pair (tied embeddings, GQA, head_dim 32, llama3 rope_freqs) built at F32 and Q8_0."""
    from conftest import make_family_pair

    pair = make_family_pair(tmp_path_factory.mktemp("l3"), "llama3", tied=True, seed=5)
    sft, rlhf = pair.sft, pair.rlhf
    out = tmp_path_factory.mktemp("l3-out")
    res = run_cli("build", "--sft", sft, "--rlhf", rlhf, "-q", "f32,q8_0", "--outdir", out)
    assert res.exit_code == 0, res.output
    return {p.stem.rsplit("-", 1)[1]: p for p in out.glob("*.gguf")}


@pytest.mark.parametrize("quant,bound", [("F32", 1e-3), ("Q8_0", 0.02)])
def test_offloaded_llama3_computes_what_the_cpu_does(llama3_built, quant, bound):
    _assert_offload_matches_cpu(llama3_built[quant], bound, f"llama3 {quant}")
