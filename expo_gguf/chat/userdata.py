"""What the chat keeps between sessions, in the user's data directory: the input history, and
which one-time notes were already given.

``platformdirs`` finds the directory (``$XDG_DATA_HOME/expo-gguf`` on Linux, ~/.local/share by
default). Nothing here is needed for a chat to work: a directory that cannot be written means
no history and repeated notes, never an error.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir("expo-gguf", appauthor=False))


def history_path() -> Path:
    return data_dir() / "history"


def first_time(name: str) -> bool:
    """True the first time ``name`` is asked about (a marker file beside the history), else False;
    True again every time when the marker cannot be written."""
    marker = data_dir() / f"{name}.noted"
    try:
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass
    return True
