"""The published ExPO models as presets: one data file (``data/presets.json``), each row with its source."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass

from .._data import data_text
from ..errors import ExpoError


def expo_name(rlhf: str) -> str:
    """The ExPO authors' naming: the RLHF model's name with -ExPO."""
    return rlhf.rstrip("/").split("/")[-1] + "-ExPO"


@dataclass(frozen=True)
class Preset:
    name: str
    sft: str
    rlhf: str
    alpha: float
    source: str
    chat_template: str | None = None  # written only when the RLHF checkpoint ships none

    def fallback_template(self, rlhf: str) -> str | None:
        """The row's template belongs to its own RLHF model, never to another the user names."""
        return self.chat_template if rlhf == self.rlhf else None

    @property
    def output_name(self) -> str:
        """The authors' own name for the model."""
        return expo_name(self.rlhf)


def _short(ident: str) -> str:
    return ident.rstrip("/").split("/")[-1].lower()


def published_preset(sft: str, rlhf: str) -> Preset | None:
    """The preset whose pair ``sft`` and ``rlhf`` are: repo ids, or local folders named as the
    repos are (``hf download --local-dir``), compared by the name after the organisation."""
    return next(
        (p for p in load_presets() if (_short(p.sft), _short(p.rlhf)) == (_short(sft), _short(rlhf))),
        None,
    )


def load_presets() -> tuple[Preset, ...]:
    """Every preset, the default first."""
    rows = json.loads(data_text("presets.json"))["presets"]
    return tuple(
        Preset(r["name"], r["sft"], r["rlhf"], float(r["alpha"]), r["source"], r.get("chat_template")) for r in rows
    )


def find_preset(name: str) -> Preset:
    presets = load_presets()
    for p in presets:
        if p.name == name.lower():
            return p
    close = difflib.get_close_matches(name.lower(), [p.name for p in presets], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ExpoError(f"no preset {name!r}{hint}; presets: {', '.join(p.name for p in presets)}")
