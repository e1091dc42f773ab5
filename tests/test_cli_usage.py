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
