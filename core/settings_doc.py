"""The README's settings table, generated from `Settings` so the two never drift apart.

`python -m core.settings_doc` rewrites the table in README.md between its markers;
a test fails when the README is out of date or a setting has no description.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic import SecretStr

from core.settings import ENV_PREFIX, Settings

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    if field.annotation is not None and "SecretStr" in str(field.annotation):
        return "(secret, unset)"
    value = field.default
    if value is None or value == "":
        return "—"
    if isinstance(value, SecretStr):
        return "(secret)"
    return f"`{value}`"


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_default(name)} | {description} |")
    return "\n".join(rows)


def render_readme(text: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{settings_table()}\n{END}", text)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render_readme(path.read_text()))


if __name__ == "__main__":
    main()
