"""Small text files (Modelfile, compare's report and JSON) written all at once.

A temporary name beside the target (``.NAME.PID.part``, so two processes never share one), then a
rename: a reader, a crash or Ctrl+C never sees half a file. ``open`` creates it, so its mode
follows the umask like any other file the user writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ExpoError


def write_text_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        try:
            with tmp.open("w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ExpoError(f"cannot write {target}: {e.strerror or e}") from None
