"""Ollama Modelfiles for our GGUFs (and any other), so ``ollama create`` gets the prompt right.

Ollama does not run a GGUF's Jinja ``tokenizer.chat_template``: it needs a Go ``text/template``.
Without a ``TEMPLATE`` line, ``ollama create`` compares the GGUF's template with the ones it ships
(``template/index.json``) and uses the closest, else its default ``{{ .Prompt }}``. We write an
explicit ``TEMPLATE`` only where the GGUF's template is one we know to be equivalent (the tests
expand it with Go's ``text/template`` and compare with the Jinja rendering), and otherwise leave
the choice to Ollama.

Conventions followed, from Ollama's own repository and docs:
- ``FROM ./file.gguf``: "Path can be absolute or relative to the Modelfile location"
  (docs/modelfile.md; ``parser.expandPath`` joins it with the Modelfile's folder), so a folder
  holding both files can be moved as a whole.
- The templates are Ollama's own ``template/openchat.gotmpl`` and ``template/chatml.gotmpl``, with
  the stops of ``openchat.json`` / ``chatml.json``. System messages are messages like any other:
  OpenChat has no system role of its own, and Ollama's openchat/starling-lm templates render one
  as ``GPT4 Correct System: ...<|end_of_turn|>``, which is also what the Jinja template does.
- No BOS in a TEMPLATE: Ollama's runner tokenizes the prompt with special tokens on, so llama.cpp
  adds BOS when the GGUF's ``tokenizer.ggml.add_bos_token`` says so.
- Our last line is a hash of the lines above it: ``build`` and ``quantize`` rewrite a Modelfile
  beside the GGUF they wrote only while that hash matches, so a user's edits are never lost
  (``expo-gguf modelfile --force`` rewrites any).
- A ``SYSTEM`` line only for a template that has a default system message (SmolLM2's ChatML):
  Ollama sends it only when a conversation has no system message, as that Jinja template does.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .._data import openchat_template
from .._fs import read_capped, unwritable_reason, write_text_atomic
from ..errors import ExpoError
from .info import GGUFInfo, describe

SUFFIX = ".Modelfile"

OPENCHAT_GO = (
    "{{- range .Messages }}GPT4 Correct\n"
    '{{- if eq .Role "system" }} System:\n'
    '{{- else if eq .Role "user" }} User:\n'
    '{{- else if eq .Role "assistant" }} Assistant:\n'
    "{{- end }} {{ .Content }}<|end_of_turn|>\n"
    "{{- end }}GPT4 Correct Assistant:"
)
CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"

CHATML_JINJA = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class KnownTemplate:
    """A Jinja chat template we can state in Ollama's syntax, with what Ollama needs beside it."""

    name: str
    jinja: tuple[str, ...]
    ollama: str
    stops: tuple[str, ...]
    system: str | None = None  # the template's default system message, if it has one


KNOWN = (
    KnownTemplate("openchat", (openchat_template(),), OPENCHAT_GO, ("<|end_of_turn|>",)),
    KnownTemplate("chatml", (CHATML_JINJA,), CHATML_GO, ("<|im_start|>", "<|im_end|>")),
    KnownTemplate("chatml-smollm2", (SMOLLM2_JINJA,), CHATML_GO, ("<|im_start|>", "<|im_end|>"), SMOLLM2_SYSTEM),
)

# The settings llama-cpp-python and transformers render chat templates with; the lexer applies
# them (and the {%- -%} markers), so equal token streams mean equal prompts.
_LEXER = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)


def _tokens(template: str) -> list[tuple[str, str]] | None:
    """Jinja's token stream without the whitespace inside tags or the spelling of delimiters."""
    try:
        return [
            (kind, "" if kind.endswith(("_begin", "_end")) else value)
            for _, kind, value in _LEXER.lex(template)
            if kind != "whitespace"
        ]
    except jinja2.TemplateSyntaxError:
        return None


_KNOWN_TOKENS = [(_tokens(j), t) for t in KNOWN for j in t.jinja]


def known_template(chat_template: str | None) -> KnownTemplate | None:
    """The entry for ``chat_template`` if it is one of ours, exactly or up to layout whitespace."""
    if not chat_template:
        return None
    for t in KNOWN:
        if chat_template in t.jinja:
            return t
    tokens = _tokens(chat_template)
    return next((t for known, t in _KNOWN_TOKENS if tokens is not None and tokens == known), None)


def is_starling(info: GGUFInfo) -> bool:
    names = [info.name or "", *info.base_models, str(info.expo.get("rlhf", ""))]
    return any("starling-lm" in n.lower() for n in names)


def modelfile_path(gguf_path: Path) -> Path:
    """``NAME-QUANT.gguf`` -> ``NAME-QUANT.Modelfile`` in the same folder."""
    return Path(gguf_path).with_suffix(SUFFIX)


def _quote(value: str, what: str) -> str:
    """Ollama's parser ends an unquoted value at a space and has no escapes inside quotes."""
    if '"' in value or "\n" in value or "\r" in value:
        raise ExpoError(f"{what} {value!r} cannot be written in a Modelfile (it holds a quote or newline)")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _from_path(gguf_path: Path, from_dir: Path) -> str:
    try:
        rel = os.path.relpath(Path(gguf_path).resolve(), Path(from_dir).resolve())
    except ValueError:  # another drive on Windows: only an absolute path can say where it is
        return str(Path(gguf_path).resolve())
    return rel if rel.startswith("..") else f"./{rel}"


_SIGNATURE = re.compile(r"(?m)^# expo-gguf sha256 ([0-9a-f]{16})\b[^\n]*\n\Z")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _signed(text: str) -> str:
    """``text`` and a last line holding its hash: how ``refresh_modelfile`` tells a file it wrote,
    unedited since, from one the user changed."""
    return text + f"# expo-gguf sha256 {_digest(text)} (the lines above): rewritten with the GGUF until you edit them\n"


def is_unedited(text: str) -> bool:
    """Whether ``text`` is a Modelfile expo-gguf wrote, unchanged since."""
    m = _SIGNATURE.search(text)
    return m is not None and _digest(text[: m.start()]) == m.group(1)


def modelfile_text(gguf_path: Path, info: GGUFInfo | None = None, *, at: Path | None = None) -> str:
    """The Modelfile for ``gguf_path`` to be written at ``at`` (default: beside the GGUF); FROM
    and the header name the GGUF relative to that folder, the header the Modelfile's own name."""
    gguf_path = Path(gguf_path)
    at = Path(at) if at is not None else modelfile_path(gguf_path)
    info = info or describe(gguf_path)
    src = _from_path(gguf_path, at.parent)
    known = known_template(info.chat_template)
    create_name = re.sub(r"[^a-z0-9._-]+", "-", gguf_path.stem.lower()).strip("-.") or "model"
    lines = [
        f"# Ollama Modelfile for {src}, written by expo-gguf. From this folder:",
        f"#   ollama create {create_name} -f {shlex.quote(at.name)}",
        f"FROM {_quote(src, 'path')}",
    ]
    if known is None:
        lines.append("# No TEMPLATE: Ollama picks one from the GGUF's own chat template where it recognises it.")
    else:
        if '"""' in known.ollama:
            raise AssertionError("a TEMPLATE cannot hold triple quotes")
        lines.append(
            f"# The GGUF's chat template ({known.name}) in Ollama's syntax, without BOS: Ollama adds it"
            " where the GGUF says so."
        )
        lines.append(f'TEMPLATE """{known.ollama}"""')
        if known.system is not None:
            lines.append(f'SYSTEM """{known.system}"""')
        lines += [f'PARAMETER stop "{s}"' for s in known.stops]
    if is_starling(info):
        lines.append("# Nexusflow's model card for Starling-LM-7B-beta: temperature 0, as it can be verbose.")
        lines.append("PARAMETER temperature 0")
    return _signed("\n".join(lines) + "\n")


def write_modelfile(
    gguf_path: Path, force: bool = False, out: Path | str | None = None, info: GGUFInfo | None = None
) -> Path:
    """Write the Modelfile (default: beside the GGUF) via a temporary name, so a reader never
    sees half a file; an existing one is kept unless ``force``. ``out`` is a file, or a folder
    (one that exists, or a name ending in a slash: made if missing) for the default name."""
    gguf_path = Path(gguf_path)
    target = Path(out) if out is not None else modelfile_path(gguf_path)
    if target.is_dir() or str(out).endswith(("/", os.sep)):
        target = target / modelfile_path(gguf_path).name
    why = unwritable_reason(target.parent)
    if why:
        raise ExpoError(f"cannot write {target}: {why}")
    if target.is_dir():
        raise ExpoError(f"{target} is a folder; give a file name")
    if target.exists() and not force:
        raise ExpoError(f"{target} exists; use --force to overwrite it")
    text = modelfile_text(gguf_path, info, at=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    return target


def refresh_modelfile(gguf_path: Path, info: GGUFInfo | None = None) -> str | None:
    """The Modelfile beside a GGUF ``build`` or ``quantize`` just wrote: written, or rewritten
    where it is one expo-gguf wrote and nobody edited since. A Modelfile the user edited (or any
    file not ours) is kept: the note saying so is returned, else None."""
    target = modelfile_path(gguf_path)
    if target.exists():
        try:
            ours = is_unedited(read_capped(target, "a Modelfile"))
        except ExpoError:
            ours = False
        if not ours:
            return f"kept your edited {target.name}; `expo-gguf modelfile {gguf_path} --force` rewrites it"
    write_text_atomic(target, modelfile_text(gguf_path, info, at=target))
    return None
