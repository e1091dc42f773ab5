"""Where a checkpoint is: a local folder, or a repo id looked up offline in the Hugging Face cache.

The cache is found the way huggingface_hub finds it (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), without importing it; nothing here touches the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ExpoError
from .presets import load_presets

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def display_name(path: Path) -> str:
    """What to call a checkpoint folder in a message: a cache snapshot's own name is a revision hash."""
    repo = path.parent.parent.name
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return path.name


def hub_cache_dir() -> Path:
    """The HF hub cache the same way huggingface_hub finds it, without importing it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def _not_a_folder(spec: str, local: Path, what: str) -> str:
    """What is wrong with a file given where a checkpoint folder belongs."""
    takes = f"{what} takes a Hugging Face checkpoint folder or repo id"
    try:
        with open(local, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""
    if local.suffix.lower() == ".gguf" or magic == b"GGUF":
        return f"{spec} is a GGUF file; {takes}"
    if (local.parent / "config.json").is_file():
        return f"{spec} is a file in a checkpoint; {what} takes its folder: {local.parent}"
    return f"{spec} is a file; {takes}"


def resolve_source(spec: str, what: str = "a checkpoint") -> tuple[Path, str | None]:
    """A local directory, or a repo id looked up offline in the HF cache; returns (dir, repo_id).

    ``what`` names the option in messages (``--sft``): a GGUF or a file inside a checkpoint is
    refused saying so, rather than with a download hint."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local, None
    if local.exists():
        raise ExpoError(_not_a_folder(spec, local, what))
    if local.suffix.lower() == ".gguf":
        raise ExpoError(
            f"{spec}: no such file, and {what} takes a Hugging Face checkpoint folder or repo id, not a GGUF"
        )
    if not REPO_ID.match(spec) or spec.startswith((".", "/", "~")):
        raise ExpoError(f"{spec}: no such directory (and not a Hugging Face repo id)")
    snapshot = cached_snapshot(spec)
    if snapshot is None:
        raise ExpoError(
            f"{spec} is not in the Hugging Face cache ({hub_cache_dir()}); download it first with: "
            f"expo-gguf download {spec} (or build with --remote to read it from the hub)"
        )
    return snapshot, spec


def cached_snapshot(repo_id: str) -> Path | None:
    """The HF cache's snapshot of ``repo_id`` (``refs/main``, else the newest), or None."""
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshot = None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
    elif (repo_dir / "snapshots").is_dir():
        snaps = sorted((repo_dir / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime)
        snapshot = snaps[-1] if snaps else None
    return snapshot if snapshot is not None and snapshot.is_dir() else None


def _repo_id(spec: str) -> bool:
    """What ``resolve_source`` looks up in the cache: no local path, no GGUF, a repo id's form."""
    local = Path(spec).expanduser()
    if local.exists() or local.suffix.lower() == ".gguf" or spec.startswith((".", "/", "~")):
        return False
    return REPO_ID.match(spec) is not None


def require_pair_cached(sft: str, rlhf: str) -> None:
    """A pair named by repo ids must both be in the HF cache: one error for what is missing, with
    the one command that downloads the pair (``download --preset NAME`` for a preset's pair)."""
    repos = [s for s in (sft, rlhf) if _repo_id(s)]
    missing = [s for s in repos if cached_snapshot(s) is None]
    if not missing:
        return
    preset = next((p for p in load_presets() if (p.sft, p.rlhf) == (sft, rlhf)), None)
    how = f"expo-gguf download --preset {preset.name}" if preset else f"expo-gguf download {' '.join(repos)}"
    are = "is" if len(missing) == 1 else "are"
    raise ExpoError(
        f"{' and '.join(missing)} {are} not in the Hugging Face cache ({hub_cache_dir()}); download "
        f"{'the pair' if len(repos) == 2 else 'it'} first with: {how} "
        f"(or build with --remote to read {'them' if len(repos) == 2 else 'it'} from the hub)"
    )
