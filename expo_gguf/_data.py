"""The files the package ships in ``expo_gguf/data``: presets, compare's prompts, chat templates.

Templates are read as bytes and decoded, never through text mode, so what a GGUF gets is the file
byte for byte.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path


@functools.cache
def data_text(name: str) -> str:
    return resources.files("expo_gguf").joinpath("data", name).read_bytes().decode("utf-8")


def openchat_template() -> str:
    """OpenChat's format (Starling, openchat-3.5), for an OpenChat vocabulary that ships no template."""
    return data_text("openchat.jinja")


def chatml_template() -> str:
    """llama.cpp's own fallback for a GGUF without a template."""
    return data_text("chatml.jinja")


def calibration_file() -> Path:
    """The calibration text ``--imatrix auto`` runs the model over (its sources: the README beside it)."""
    return Path(str(resources.files("expo_gguf").joinpath("data", "calibration", "calibration.txt")))
