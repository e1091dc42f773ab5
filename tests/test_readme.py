"""The docs' --help blocks are the CLI's own output (regenerate with scripts/readme_help.py), and the
README and docs/ link to files that exist."""

from conftest import _load_script


def test_readme_help_blocks_are_current():
    readme_help = _load_script("readme_help")
    assert readme_help.main(["--check"]) == 0, "run: python scripts/readme_help.py"


def test_cli_md_has_every_command():
    """docs/cli.md promises every command's --help: a command added without its block fails here."""
    import re

    import click

    from expo_gguf.cli import cli

    from conftest import ROOT

    blocks = set(re.findall(r"<!-- help:([\w -]+) -->", (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")))
    names = {"expo-gguf"}
    for name in cli.list_commands(None):
        names.add(name)
        command = cli.get_command(None, name)
        if isinstance(command, click.Group):  # logs show, logs rm, ...
            names |= {f"{name} {sub}" for sub in command.list_commands(None)}
    assert names == blocks


def test_readme_has_no_unfilled_placeholders():
    from conftest import ROOT

    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        assert "_FIGURES" not in text and "TODO" not in text, path


def test_links_between_docs_resolve():
    import re

    from conftest import ROOT

    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which is not there"


def test_readme_stays_short():
    from conftest import ROOT

    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 200
