"""``--math``: the ExPO authors' bf16 arithmetic against their own recipe run with torch and
converted by llama.cpp's convert_hf_to_gguf.py, the float32 arithmetic against the same formula in
torch's float32, and the per-tensor default, the plan line and ``expo.math``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from expo_gguf.gguf_file.header import read_gguf_header, tensor_nbytes

from conftest import Pair, llama_cpp_src, make_family_pair, run_cli

pytestmark = pytest.mark.slow

ALPHAS = (0.5, 0.3, 0.1, -1.0)

# One interpreter runs every conversion: convert_hf_to_gguf.py imports torch and its model classes
# once (a few seconds) instead of once per file.
_CONVERT_MANY = """
import json, os, runpy, sys
script, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, os.path.dirname(script))  # as running the script would (its conversion/ package)
main = runpy.run_path(script, run_name="convert_hf_to_gguf")["main"]
for args in jobs:
    sys.argv = [script, *args]
    main()
"""


def _convert(jobs: list[tuple[Path, str, Path]]) -> None:
    """llama.cpp's converter from the sdist (its own gguf-py), ``--outtype`` per (model, type, file)."""
    script = llama_cpp_src() / "convert_hf_to_gguf.py"
    args = [[str(model), "--outtype", outtype, "--outfile", str(out)] for model, outtype, out in jobs]
    res = subprocess.run(
        [sys.executable, "-c", _CONVERT_MANY, str(script), json.dumps(args)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]


def _authors_recipe(pair: Pair, alphas: tuple[float, ...], out: Path, dtype: str = "bf16") -> dict[float, Path]:
    """code/extrapolate.py of chujiezheng/LLM-Extrapolation, on the CPU: both models in bf16,
    ``dpo + alpha * (dpo - sft)`` per parameter, save_pretrained; the models are loaded once for
    all alphas. ``dtype="f32"``: the formula as expo-gguf's ``--math f32`` evaluates it, in float32."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    load = torch.bfloat16 if dtype == "bf16" else torch.float32
    sft = transformers.AutoModelForCausalLM.from_pretrained(pair.sft, dtype=load)
    dpo = transformers.AutoModelForCausalLM.from_pretrained(pair.rlhf, dtype=load)
    sft_state = sft.state_dict()
    original = {name: param.data.clone() for name, param in dpo.named_parameters()}
    saved = {}
    for alpha in alphas:
        with torch.no_grad():
            for name, param in dpo.named_parameters():
                d = original[name]
                if dtype == "bf16":  # the script's own line
                    param.data = d + alpha * (d - sft_state[name])
                else:
                    a = torch.tensor(alpha, dtype=torch.float32)
                    param.data = (1 + a) * d - a * sft_state[name]
        saved[alpha] = out / f"expo-{dtype}-{alpha:g}"
        dpo.save_pretrained(saved[alpha])
        for f in pair.rlhf.iterdir():  # the tokenizer, as the script's toker.save_pretrained leaves it
            if f.is_file() and not f.name.endswith(("safetensors", ".index.json")) and f.name != "config.json":
                shutil.copy(f, saved[alpha] / f.name)
    return saved


def _tensors(path: Path) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    """Every tensor's type, shape and bytes (our checked header walk: gguf-py's reader takes ~8 s
    over a Llama 3 vocabulary)."""
    header = read_gguf_header(path)
    with open(path, "rb") as f:
        data = f.read()
    return {
        t.name: (t.ggml_type, t.shape, data[header.data_start + t.offset :][: tensor_nbytes(t)]) for t in header.tensors
    }


def _assert_same_tensors(ours: Path, theirs: Path) -> None:
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b), (ours.name, sorted(set(a) ^ set(b)))
    differ = [n for n in a if a[n] != b[n]]
    assert not differ, f"{ours.name}: {len(differ)} of {len(a)} tensors differ from the converter's (first {differ[0]})"


def _build(pair: Pair, out: Path, *options: str) -> None:
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", out, "--name", "M", *options)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def llama3_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return make_family_pair(tmp_path_factory.mktemp("llama3"), "llama3")


@pytest.mark.reference
@pytest.mark.parametrize("family", ["starling", "llama3"])
def test_bf16_math_is_the_authors_model_through_the_converter(family, pair, llama3_pair, tmp_path):
    """Every alpha of one read, BF16 and Q8_0: every tensor's type, shape and bytes are the
    converter's from the model the authors' script saves."""
    p = pair if family == "starling" else llama3_pair
    alphas = ALPHAS if family == "starling" else (0.3, -1.0)  # Llama 3's vocabulary makes each conversion slow
    _build(p, tmp_path / "ours", "--alpha", ",".join(map(str, alphas)), "-q", "bf16,q8_0")
    models = _authors_recipe(p, alphas, tmp_path)
    _convert([(models[a], t, tmp_path / f"theirs-{a:g}-{t}.gguf") for a in alphas for t in ("bf16", "q8_0")])
    for alpha in alphas:
        for t in ("bf16", "q8_0"):
            ours = tmp_path / "ours" / f"M-a{alpha:g}-{t.upper()}.gguf"
            assert read_gguf_header(ours).values["expo.math"] == "bf16"
            _assert_same_tensors(ours, tmp_path / f"theirs-{alpha:g}-{t}.gguf")


@pytest.mark.reference
def test_f32_math_keeps_one_rounding_and_k_quants_start_from_the_bf16_values(pair, tmp_path):
    """``--math f32`` is the float32 formula rounded once (the converter's bytes from torch's
    float32 result); a K-quant under bf16 maths is llama.cpp's quantizer on the authors' model."""
    alpha = 0.3
    _build(pair, tmp_path / "f32", "--alpha", str(alpha), "-q", "bf16,q8_0", "--math", "f32")
    _build(pair, tmp_path / "bf16", "--alpha", str(alpha), "-q", "q8_0,q4_k_m")
    f32_model = _authors_recipe(pair, (alpha,), tmp_path, dtype="f32")[alpha]
    bf16_model = _authors_recipe(pair, (alpha,), tmp_path)[alpha]
    _convert(
        [
            (f32_model, "bf16", tmp_path / "theirs-f32-bf16.gguf"),
            (f32_model, "q8_0", tmp_path / "theirs-f32-q8_0.gguf"),
            (bf16_model, "bf16", tmp_path / "theirs-bf16-bf16.gguf"),
        ]
    )
    for t in ("bf16", "q8_0"):
        ours = tmp_path / "f32" / f"M-{t.upper()}.gguf"
        assert read_gguf_header(ours).values["expo.math"] == "f32"
        _assert_same_tensors(ours, tmp_path / f"theirs-f32-{t}.gguf")
    # the two maths differ on this pair, so the tests above tell them apart
    assert _tensors(tmp_path / "f32" / "M-Q8_0.gguf") != _tensors(tmp_path / "bf16" / "M-Q8_0.gguf")
    res = run_cli("quantize", tmp_path / "theirs-bf16-bf16.gguf", "-q", "q4_k_m", "-o", tmp_path / "theirs-q4_k_m.gguf")
    assert res.exit_code == 0, res.output
    _assert_same_tensors(tmp_path / "bf16" / "M-Q4_K_M.gguf", tmp_path / "theirs-q4_k_m.gguf")


def _stored_as(src: Path, dst: Path, dtype: object, only: str = "") -> Path:
    """A copy of a checkpoint with its tensors (those whose name contains ``only``) stored in the torch ``dtype``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = {k: v.to(dtype) if only in k else v for k, v in load_file(f).items()}
        save_file(tensors, f, metadata={"format": "pt"})
    return dst


def _plan_math(pair: Pair, out: Path, *options: str) -> str:
    res = run_cli("build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", out, "--dry-run", *options)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the console wraps long lines
    return text[text.index("math: ") : text.index(" writing into")]


def test_default_is_bf16_per_tensor_where_both_store_bf16(pair, tmp_path):
    torch = pytest.importorskip("torch")
    assert _plan_math(pair, tmp_path / "o").startswith("math: bf16, the ExPO authors' roundings")
    _build(pair, tmp_path / "o", "-q", "q8_0")
    res = run_cli("info", tmp_path / "o" / "M-Q8_0.gguf")
    assert res.exit_code == 0 and "math=bf16" in res.output, res.output

    # the SFT's norms in float32: those tensors get f32 maths, the file says mixed
    mixed = Pair(_stored_as(pair.sft, tmp_path / "sft-mixed", torch.float32, only="norm"), pair.rlhf)
    n_norms = sum(1 for t in _tensors(tmp_path / "o" / "M-Q8_0.gguf") if "norm" in t)
    line = _plan_math(mixed, tmp_path / "m")
    assert line.startswith("math: mixed: bf16 for the ") and line.endswith(f"f32 for the other {n_norms}"), line
    _build(mixed, tmp_path / "m", "-q", "q8_0")
    assert read_gguf_header(tmp_path / "m" / "M-Q8_0.gguf").values["expo.math"] == "mixed"

    # an F16 checkpoint: f32 unless asked
    f16 = Pair(pair.sft, _stored_as(pair.rlhf, tmp_path / "rlhf-f16", torch.float16))
    assert _plan_math(f16, tmp_path / "h").startswith("math: f32, rounded once")
    assert _plan_math(f16, tmp_path / "h", "--math", "bf16") == "math: bf16 for every tensor (--math bf16)"
    assert _plan_math(pair, tmp_path / "h", "--math", "f32") == "math: f32 for every tensor (--math f32)"


@pytest.mark.parametrize("math,intermediate", [("bf16", "BF16"), ("f32", "F16")])
def test_k_quants_under_either_maths_start_from_a_16_bit_file_that_holds_them(pair, tmp_path, math, intermediate):
    """bf16 maths: a BF16 intermediate holds the values exactly; f32 maths: F16, 3 more mantissa bits."""
    res = run_cli(
        "build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--outdir", tmp_path, "--name", "M", "-q", "q4_k_m",
        "--math", math, "--dry-run",
    )  # fmt: skip
    assert res.exit_code == 0 and f".M-{intermediate}.intermediate.gguf" in res.output, res.output
    _build(pair, tmp_path, "-q", "q4_k_m", "--math", math)
    assert read_gguf_header(tmp_path / "M-Q4_K_M.gguf").values["expo.math"] == math
    assert not list(tmp_path.glob(".*"))  # the intermediate is gone


def test_forced_bf16_math_rounds_other_inputs_as_loading_in_bf16_does(pair, tmp_path):
    """An F16-stored RLHF under ``--math bf16`` gives what the bf16 pair of its rounded values gives."""
    torch = pytest.importorskip("torch")
    f16 = Pair(pair.sft, _stored_as(pair.rlhf, tmp_path / "rlhf-f16", torch.float16))
    rounded = Pair(pair.sft, _stored_as(f16.rlhf, tmp_path / "rlhf-rounded", torch.bfloat16))
    _build(f16, tmp_path / "a", "-q", "f32", "--math", "bf16")
    _build(rounded, tmp_path / "b", "-q", "f32")
    _assert_same_tensors(tmp_path / "a" / "M-F32.gguf", tmp_path / "b" / "M-F32.gguf")
