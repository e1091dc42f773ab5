"""The front door: every name in ``expo_gguf.__all__`` resolves, and the package's layers import one way."""

from __future__ import annotations

import ast
from pathlib import Path

import expo_gguf

from conftest import ROOT

PACKAGE = ROOT / "expo_gguf"
# Who may import whom (subpackage -> what it may import besides the top-level helpers).
ALLOWED = {
    "source": set(),
    "gguf_file": set(),
    "runtime": {"gguf_file"},
    "quant": {"gguf_file", "runtime"},
    "convert": {"source", "quant", "gguf_file", "runtime"},
    "chat": {"runtime", "gguf_file"},
    "measure": {"runtime", "gguf_file", "chat"},
    "cli": {"source", "convert", "quant", "gguf_file", "runtime", "chat", "measure"},
}
TOP = {"errors", "progress", "_fs", "_units", "_data"}
LLAMA_FREE = [
    "chat/messages.py",
    "chat/repl.py",
    "chat/vs.py",
    "chat/conversation.py",
    "chat/render.py",
    "chat/line_editor.py",
    "chat/userdata.py",
    "chat/commands.py",
    "chat/store.py",
    "chat/keeping.py",
    "chat/server/openai.py",
    "chat/server/keep.py",
    "chat/logs.py",
]


def test_every_public_name_resolves() -> None:
    assert len(set(expo_gguf.__all__)) == len(expo_gguf.__all__)
    for name in expo_gguf.__all__:
        assert getattr(expo_gguf, name) is not None, name


def _imports(path: Path) -> list[tuple[str, int]]:
    """(first package part of each expo_gguf module this file imports, line)."""
    rel = path.relative_to(PACKAGE).parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[:-1])[: len(rel) - node.level]
            target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names] if not node.module else []
            for t in [target + [n] for n in names] or [target]:
                if t:
                    found.append((t[0], node.lineno))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(m.split(".")[1], node.lineno) for m in mods if m.startswith("expo_gguf.")]
    return found


def test_imports_go_one_way() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if len(rel) == 1:  # top-level helpers import only each other
            allowed = TOP
        else:
            allowed = ALLOWED[rel[0]] | TOP | {rel[0]}
        for target, line in _imports(path):
            front = len(rel) == 1 and rel[0] in ("__init__.py", "__main__.py")  # the front doors
            if target.removesuffix(".py") not in allowed and not front:
                wrong.append(f"{'/'.join(rel)}:{line} imports {target}")
    assert not wrong, wrong


def test_the_chat_layer_does_not_import_llama_cpp_or_click() -> None:
    for name in LLAMA_FREE:
        tree = ast.parse((PACKAGE / name).read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert not {m for m in mods if m.split(".")[0] in ("llama_cpp", "click")}, name
        if name != "chat/line_editor.py":  # the REPL reads lines through a callable, never the editor itself
            assert not {m for m in mods if m.split(".")[0] == "prompt_toolkit"}, name


def test_every_data_file_is_package_data() -> None:
    """Files the package reads at run time (presets, prompts, templates, the chat page) go into the
    wheel: each matches a package-data glob in pyproject.toml."""
    import re
    from fnmatch import fnmatch

    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    globs = re.findall(r'"([^"]+)"', re.search(r"expo_gguf = \[(.*?)\]", section).group(1))
    skip = {".py", ".c", ".h", ".so", ".pyc"}
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in skip and "__pycache__" not in p.parts]
    assert files, "no data files found"
    missing = [
        str(p.relative_to(PACKAGE)) for p in files if not any(fnmatch(str(p.relative_to(PACKAGE)), g) for g in globs)
    ]
    assert missing == []
