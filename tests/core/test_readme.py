"""README stays accurate: every setting is documented, with a description."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings
from core.settings_doc import render_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_description() -> None:
    missing = [name for name, f in Settings.model_fields.items() if not f.description]
    assert missing == [], f"describe these settings in core/settings.py: {missing}"


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    assert text == render_readme(text), "run `python -m core.settings_doc` to refresh README.md"


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    assert "dreambot up" in text and "pytest -n 2" in text
