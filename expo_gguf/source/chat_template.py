"""The chat template a GGUF carries: --chat-template, else the RLHF checkpoint's own, byte for byte.

llama.cpp and llama-cpp-python render the GGUF's template with Jinja; one that does not parse would
fail only at the first chat, so it is checked here, before any output is written.
"""

from __future__ import annotations

from pathlib import Path

from .._data import openchat_template
from ..errors import ExpoError
from .checkpoint import read_json
from .hub import display_name

END_OF_TURN = "<|end_of_turn|>"
OPENCHAT_TEMPLATE = openchat_template()


def _read_template(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8")  # byte for byte: no newline translation
    except OSError as e:
        raise ExpoError(f"chat template {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ExpoError(f"chat template {path}: not UTF-8 text") from None
    if not text.strip():
        raise ExpoError(f"chat template {path} is empty")
    return text


def jinja_error(template: str) -> str | None:
    """A template that does not parse would only fail later, at the first chat."""
    import jinja2

    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as e:
        return f"line {e.lineno}: {e.message}"
    except (jinja2.TemplateError, RecursionError) as e:
        return str(e)[:100] or type(e).__name__
    return None


def chat_template(
    root: Path, tok_config: dict, override: Path | None, has_end_of_turn: bool, fallback: str | None = None
) -> tuple[str, str | None]:
    """--chat-template, else the checkpoint's own byte for byte, else the preset's (``fallback``);
    OpenChat's only for an OpenChat vocab."""
    if override is not None:
        text = _read_template(override)
        if (problem := jinja_error(text)) is not None:
            raise ExpoError(f"chat template {override} is not valid Jinja ({problem})")
        return text, None
    text, warning = _own_template(root, tok_config, has_end_of_turn, fallback)
    if (problem := jinja_error(text)) is not None:
        warning = (
            f"{display_name(root)}'s chat template is not valid Jinja ({problem}); "
            "chat will fail: give --chat-template FILE"
        )
    return text, warning


def _own_template(root: Path, tok_config: dict, has_end_of_turn: bool, fallback: str | None) -> tuple[str, str | None]:
    """In transformers' order: a chat_template.jinja file before tokenizer_config.json's entry."""
    tmpl = tok_config.get("chat_template")
    if isinstance(tmpl, list):  # named templates: take the default one, as transformers does
        tmpl = next((t.get("template") for t in tmpl if isinstance(t, dict) and t.get("name") == "default"), None)
    if (root / "chat_template.jinja").is_file():
        text = _read_template(root / "chat_template.jinja")
        differs = isinstance(tmpl, str) and tmpl and tmpl != text
        return text, (
            "chat_template.jinja and tokenizer_config.json's chat_template differ; writing the "
            ".jinja file's, as transformers uses it"
        ) if differs else None
    if isinstance(tmpl, str) and tmpl:
        return tmpl, None
    tmpl = read_json(root / "chat_template.json", "chat template", required=False).get("chat_template")
    if isinstance(tmpl, str) and tmpl:
        return tmpl, None
    if fallback:
        return (
            fallback,
            f"{display_name(root)} has no chat template; writing the preset's (the format its model card gives)",
        )
    if has_end_of_turn:
        return (
            OPENCHAT_TEMPLATE,
            f"{display_name(root)} has no chat template; writing the OpenChat one (its vocab has {END_OF_TURN})",
        )
    raise ExpoError(
        f"{root} has no chat template (tokenizer_config.json chat_template, chat_template.jinja); "
        "give one with --chat-template FILE"
    )
