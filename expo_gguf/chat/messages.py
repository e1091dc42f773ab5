"""The chat layer's own plain types: a message, and the sampling settings ``/set`` changes.

``Message`` stays a dict (a ``TypedDict``): chat templates are Jinja over ``message['role']`` and
conversation files are JSON, so a dict crosses both edges as it is. ``Sampling`` is a plain
dataclass; the runtime reads it by attribute and maps a negative seed to llama.cpp's random one.
Nothing here imports llama.cpp, so the REPL is tested with a fake backend in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..errors import ExpoError

ROLES = ("system", "user", "assistant")
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a new random seed for every reply


class Message(TypedDict):
    role: str  # one of ROLES
    content: str


@dataclass
class Sampling:
    """Sampling settings, mutable so ``/set`` in the REPL changes the next reply.

    Defaults are llama.cpp's; ``max_tokens`` -1 means until end of turn or a full context.
    """

    temp: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int = -1
    seed: int = RANDOM_SEED

    def __post_init__(self) -> None:
        if self.seed < 0:  # as llama.cpp's --seed -1: a random seed
            self.seed = RANDOM_SEED
        checks = {  # each setting, whether it is valid, and the range it must be in
            "temp": (self.temp >= 0, ">= 0 (0 = greedy)"),
            "top_p": (0 < self.top_p <= 1, "> 0 and <= 1"),
            "top_k": (self.top_k >= 0, ">= 0 (0 = all tokens)"),
            "min_p": (0 <= self.min_p <= 1, "between 0 and 1"),
            "repeat_penalty": (self.repeat_penalty > 0, "> 0 (1 = off)"),
            "max_tokens": (self.max_tokens == -1 or self.max_tokens > 0, "> 0, or -1 for no limit"),
        }
        bad = [f"{name} must be {valid}" for name, (ok, valid) in checks.items() if not ok]
        if bad:
            raise ExpoError("; ".join(bad))


def message_problem(i: int, m: object) -> str | None:
    """Why ``m`` (the ``i``-th entry) is not a message the REPL can send, or None."""
    if not isinstance(m, dict):
        return f"message {i} is a {type(m).__name__}, not an object with role and content"
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        said = f"role {repr(role)[:40]}" if "role" in m else "no role"
        return f"message {i} has {said}; roles are {', '.join(ROLES)}"
    if role == "system" and i != 0:
        return f"message {i} is a system message; only the first message may be one"
    if not isinstance(content, str):
        return f"message {i} has {type(content).__name__} content; content must be a string"
    return None
