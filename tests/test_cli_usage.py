"""click's own usage errors read like every other error: one ``error:`` line, then where help is."""

import pytest
from click.testing import CliRunner

from expo_gguf.cli import cli


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="expo-gguf")


@pytest.mark.parametrize(
    ("args", "expected", "command"),
    [
        (["build", "--quant"], "Option '--quant' requires an argument", "expo-gguf build"),
        (["chat", "--bogus"], "No such option '--bogus'. Did you mean '--verbose'?", "expo-gguf chat"),
        (["info"], "Missing argument 'PATH'", "expo-gguf info"),
        (["build", "--threads", "many"], "Invalid value for '--threads'", "expo-gguf build"),
        (["biuld"], "No such command 'biuld'. Did you mean 'build'?", "expo-gguf"),
        (["--bogus"], "No such option '--bogus'", "expo-gguf"),
    ],
)
def test_usage_error_is_one_line_and_a_hint(args, expected, command):
    res = run_cli(*args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2, res.output
    assert lines[0].startswith("error: ") and expected in lines[0], res.output
    assert lines[1] == f"try: {command} --help"
    assert "Usage:" not in res.output and "Traceback" not in res.output


def test_bare_command_still_shows_the_help():
    res = run_cli()
    assert "Usage: " in res.output and "Commands:" in res.output and "error:" not in res.output


def test_every_command_is_where_the_group_says() -> None:
    """The group imports a command's module only when it runs: its map must name every command
    each module defines, and nothing else."""
    import importlib
    import pkgutil

    import expo_gguf.cli as package
    from expo_gguf.cli import COMMANDS

    defined = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"expo_gguf.cli.{info.name}")
        defined.update({c.name: info.name for c in getattr(module, "COMMANDS", ())})
    assert defined == COMMANDS


def test_logs_starts_without_llama_cpp_or_numpy(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nsys.argv = ['expo-gguf', 'logs', '-n', '1']\nfrom expo_gguf.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('llama_cpp', 'numpy') if m in sys.modules))"
    )
    env = {"EXPO_GGUF_LOGS_DB": str(tmp_path / "logs.db"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
    info = subprocess.run(  # a command that runs llama.cpp loads it first, as the package does for library users
        [sys.executable, "-c", code.replace("'logs', '-n', '1'", "'info', '--help'")], capture_output=True, text=True
    )
    assert "llama_cpp" in info.stdout, info.stdout + info.stderr


def test_a_table_too_wide_for_the_terminal_splits_no_cell() -> None:
    import io

    from rich.console import Console
    from rich.table import Table

    from expo_gguf.cli._output import print_table

    digest = "ab" * 32
    t = Table(title="built in out")
    for col in ("file", "type", "size", "sha256"):
        t.add_column(col)
    t.add_row("Starling-LM-7B-beta-ExPO-Q8_0.gguf", "Q8_0", "19.4 MB", digest)
    for width, table in ((200, True), (80, False)):
        buf = io.StringIO()
        print_table(t, Console(file=buf, force_terminal=True, width=width, color_system=None))
        lines = buf.getvalue().splitlines()
        assert all(len(line) <= width for line in lines), lines
        assert any(digest in line for line in lines) and any("Starling-LM-7B-beta-ExPO-Q8_0.gguf" in x for x in lines)
        assert ("┃" in buf.getvalue()) is table  # a box where it fits, else a block per row
    assert lines == [
        "built in out",
        "Starling-LM-7B-beta-ExPO-Q8_0.gguf",
        "  type Q8_0 · size 19.4 MB",
        f"  sha256 {digest}",
    ]
    buf = io.StringIO()
    print_table(t, Console(file=buf, force_terminal=False, width=80))
    assert buf.getvalue() == f"Starling-LM-7B-beta-ExPO-Q8_0.gguf\tQ8_0\t19.4 MB\t{digest}\n"  # piped
