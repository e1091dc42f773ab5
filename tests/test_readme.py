"""The README's --help blocks are the CLI's own output (regenerate with scripts/readme_help.py)."""

from conftest import _load_script


def test_readme_help_blocks_are_current():
    readme_help = _load_script("readme_help")
    assert readme_help.main(["--check"]) == 0, "run: python scripts/readme_help.py"


def test_readme_has_no_unfilled_placeholders():
    from conftest import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "_FIGURES" not in text and "TODO" not in text
