"""The README documents the configuration the code actually reads."""

from pathlib import Path

from scripts.config_reference import rows, with_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_is_current() -> None:
    text = README.read_text()
    assert with_reference(text) == text, (
        "README configuration table is stale: run `python -m scripts.config_reference "
        "--write README.md`"
    )


def test_every_setting_has_a_description() -> None:
    undocumented = [variable for variable, _, _, description in rows() if not description]
    assert not undocumented, f"settings without a description: {undocumented}"
