"""Settings: embedded defaults, environment overrides, one-line errors naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import SettingsError, load_settings


def test_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(_env_file=None)
    assert s.resolved_database_url == "sqlite:///var/dreambot.db"
    assert s.resolved_broker_url == "filesystem://"
    assert s.resolved_storage_url == "var/storage"
    assert (s.web_host, s.web_port) == ("127.0.0.1", 8080)
    assert s.llm_model == "google/gemma-3-27b-it"
    assert s.llm_base_url.startswith("https://openrouter.ai/")
    assert s.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DREAMBOT_WEB_PORT=9999\nDREAMBOT_LLM_MODEL=gemma3:27b\n")
    monkeypatch.setenv("DREAMBOT_LLM_MODEL", "from-env")
    s = load_settings()
    assert s.web_port == 9999  # from .env
    assert s.llm_model == "from-env"  # the environment wins over .env


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "nonsense"),
        ("BROKER_URL", "kafka://x"),
        ("WEB_PORT", "eighty"),
        ("LLM_BASE_URL", "openrouter"),
        ("STORAGE_URL", "s3://"),
    ],
)
def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"DREAMBOT_{name}", value)
    with pytest.raises(SettingsError) as err:
        load_settings(_env_file=None)
    message = str(err.value)
    assert f"DREAMBOT_{name}" in message
    assert "\n" not in message


def test_public_web_host_needs_a_real_session_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMBOT_WEB_HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match="DREAMBOT_SESSION_SECRET"):
        load_settings(_env_file=None)
    monkeypatch.setenv("DREAMBOT_SESSION_SECRET", "x" * 40)
    assert load_settings(_env_file=None).web_host == "0.0.0.0"


def test_secrets_are_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMBOT_LLM_API_KEY", "sk-very-secret")
    monkeypatch.setenv("DREAMBOT_DISCORD_TOKEN", "discord-very-secret")
    s = load_settings(_env_file=None)
    shown = repr(s) + str(s.model_dump())
    assert "very-secret" not in shown
    assert s.llm_api_key is not None and s.llm_api_key.get_secret_value() == "sk-very-secret"


def test_generated_session_secret_is_kept(tmp_path: Path) -> None:
    s = load_settings(_env_file=None, data_dir=tmp_path)
    first = s.session_secret_value()
    assert len(first) >= 32
    assert load_settings(_env_file=None, data_dir=tmp_path).session_secret_value() == first


def test_cli_stops_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DREAMBOT_DATABASE_URL": "nonsense", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "db", "upgrade"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "DREAMBOT_DATABASE_URL" in lines[0] and "nonsense" in lines[0]
