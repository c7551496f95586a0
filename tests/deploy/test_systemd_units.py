"""deploy/: the systemd units pass `systemd-analyze verify`, and the example settings load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED_CLI = "/opt/dreambot/.venv/bin/dreambot"
ENV_FILE = "/etc/dreambot/dreambot.env"


def unit_files() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def test_every_unit_is_in_the_guide() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert len(unit_files()) >= 4
    for unit in unit_files():
        assert unit.name in guide, f"docs/deploy.md does not mention {unit.name}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_verify(tmp_path: Path) -> None:
    # Verify checks that ExecStart exists and is executable: point the units at this
    # checkout's CLI and env file, as an install under /opt/dreambot would have them.
    cli = Path(sys.executable).parent / "dreambot"
    assert cli.exists(), "install the package (pip install -e .) to get the dreambot command"
    env = tmp_path / "dreambot.env"
    env.write_text((UNITS / "dreambot.env.example").read_text())
    checked = []
    for unit in unit_files():
        text = unit.read_text().replace(INSTALLED_CLI, str(cli)).replace(ENV_FILE, str(env))
        assert str(cli) in text, f"{unit.name} does not run {INSTALLED_CLI}"
        text = "\n".join(
            line for line in text.splitlines() if not line.startswith(("User=", "Group="))
        )  # the dreambot user exists on a server, not here
        name = unit.name.replace("@.service", "@0.service")  # a template verifies as an instance
        (tmp_path / name).write_text(text)
        checked.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *checked], capture_output=True, text=True, timeout=120
    )
    ours = [line for line in result.stderr.splitlines() if "dreambot" in line]
    assert result.returncode == 0 and ours == [], result.stderr


def test_example_environment_is_valid_settings() -> None:
    values = {}
    for line in (UNITS / "dreambot.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert name.startswith("DREAMBOT_"), name
            values[name.removeprefix("DREAMBOT_").lower()] = value
    unknown = sorted(set(values) - set(Settings.model_fields))
    assert unknown == [], f"not settings: {unknown}"
    Settings(_env_file=None, **values)  # type: ignore[call-arg]
