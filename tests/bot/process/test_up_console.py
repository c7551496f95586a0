"""What a newcomer reads when `dreambot up` starts: one line per part, no library noise;
`-v` prints everything. Plus the lines themselves (chat mode, base model, devices)."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.process.console import (
    base_model_line,
    chat_line,
    device_of,
    platforms_line,
    setup_up_logging,
)
from core.logs import announce
from core.settings import Settings
from tests.helpers.up_process import UpProcess

HOST = socket.gethostname()
NOISE = (
    "SecurityWarning",
    "superuser privileges",
    "No hostname was supplied",
    "[tasks]",
    "alembic",
    "Uvicorn",
)


@pytest.mark.slow
def test_the_terminal_shows_one_line_per_part(sqlite_settings: Settings, tiny_model_dir: Path) -> None:
    settings = sqlite_settings.model_copy(update={"base_model": str(tiny_model_dir)})
    up = UpProcess(settings, settings.data_dir.parent)
    try:
        text = up.wait_output("web: ", f"worker train@{HOST}: ready", f"worker sample@{HOST}: ready")
        lines = up.lines()
        for noise in NOISE:
            assert noise not in text, f"{noise!r} printed:\n{text}"
        for part in (
            "dreambot: logs in",
            "database: ",
            "base model: ",
            "chat: ",
            "web: ",
            "discord, slack: ",
        ):
            assert sum(line.startswith(part) for line in lines) == 1, f"{part!r} in:\n{text}"
        assert (
            f"worker train@{HOST}: ready on CPU" in lines and f"worker sample@{HOST}: ready on CPU" in lines
        )
        assert (
            f"web: playground http://127.0.0.1:{up.port}/ · dashboard http://127.0.0.1:{up.port}/admin"
            in lines
        )
        assert f"base model: local folder {tiny_model_dir} (" in text
        assert "GPU: none found" in text
        assert all(line.strip() for line in lines), "blank lines are noise too"
        logs = settings.data_dir / "logs"
        assert f"dreambot: logs in {logs}/" in text
        # The noise is still there for whoever needs it: in the workers' own log files.
        assert "[tasks]" in (logs / f"train@{HOST}.log").read_text()
        assert "Application startup complete" in (logs / "dreambot.log").read_text()
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(90) == 0
    finally:
        up.kill_everything()


@pytest.mark.slow
def test_verbose_prints_everything(sqlite_settings: Settings) -> None:
    up = UpProcess(sqlite_settings, sqlite_settings.data_dir.parent, "-v")
    try:
        text = up.wait_output(f"train@{HOST} ready.", f"sample@{HOST} ready.")
        assert "[tasks]" in text and ".> transport:" in text  # Celery's banner
        assert "Context impl SQLiteImpl" in text and "Uvicorn running on" in text
        assert not (sqlite_settings.data_dir / "logs" / f"train@{HOST}.log").exists()
    finally:
        up.kill_everything()


def test_terminal_gets_announcements_our_warnings_and_errors_only(sqlite_settings: Settings) -> None:
    terminal = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        # DREAMBOT_LOG_LEVEL=WARNING trims the log file, never the person's lines.
        quieter = sqlite_settings.model_copy(update={"log_level": "WARNING"})
        folder = setup_up_logging(quieter, verbose=False, terminal=terminal)
        announce("web: playground http://x/")
        logging.getLogger("kombu.connection").warning("No hostname was supplied.")
        logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001")
        logging.getLogger("bot.chat.delivery").warning("Discord unreachable")
        logging.getLogger("uvicorn.error").error("address already in use")
        for handler in root.handlers:
            handler.flush()
    finally:
        root.handlers[:], root.level = saved
        logging.captureWarnings(False)
    assert terminal.getvalue().splitlines() == [
        "web: playground http://x/",
        "warning: Discord unreachable",
        "error: address already in use",
    ]
    assert folder is not None
    written = (folder / "dreambot.log").read_text()
    assert "No hostname was supplied" in written and "web: playground" in written
    assert "Running upgrade 0001" not in written


def test_chat_line_says_which_llm_or_none(sqlite_settings: Settings) -> None:
    assert chat_line(sqlite_settings.model_copy(update={"llm_api_key": None})) == (
        "chat: no LLM configured (DREAMBOT_LLM_API_KEY unset)"
    )
    keyed = sqlite_settings.model_copy(update={"llm_api_key": SecretStr("sk-or-x")})
    assert chat_line(keyed) == "chat: LLM google/gemma-3-27b-it at https://openrouter.ai/api/v1"
    ollama = sqlite_settings.model_copy(
        update={"llm_api_key": None, "llm_base_url": "http://localhost:11434/v1", "llm_model": "gemma3:27b"}
    )
    assert chat_line(ollama) == "chat: LLM gemma3:27b at http://localhost:11434/v1"
    assert platforms_line(sqlite_settings.model_copy(update={"discord_token": SecretStr("x")})) is None


def fake_hub_cache(root: Path, repo_id: str, size: int) -> Path:
    """A Hugging Face hub cache holding one model: blobs, a snapshot linking them, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(b"\0" * size)
    snapshot = repo / "snapshots" / ("0" * 40)
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "weights.safetensors").symlink_to(repo / "blobs" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return root


def test_base_model_line(sqlite_settings: Settings, tmp_path: Path) -> None:
    default = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    hub = sqlite_settings.model_copy(update={"base_model": default})
    assert base_model_line(hub, tmp_path / "no-cache") == (
        f"base model: {default} not downloaded yet: the workers download it as they warm up (5.5 GB)"
    )
    cache = fake_hub_cache(tmp_path / "hub", default, 2_500_000)
    assert base_model_line(hub, cache) == f"base model: {default} found in the Hugging Face cache (2.5 MB)"
    other = hub.model_copy(update={"base_model": "someone/another-model"})
    assert base_model_line(other, cache).endswith("the workers download it as they warm up")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"x": 1}) + " " * 1990)
    assert base_model_line(hub.model_copy(update={"base_model": str(folder)})) == (
        f"base model: local folder {folder} (2.0 KB)"
    )
    missing = hub.model_copy(update={"base_model": str(tmp_path / "nowhere")})
    assert base_model_line(missing).endswith("not found (DREAMBOT_BASE_MODEL)")


def test_device_of_a_worker_row() -> None:
    assert device_of({"torch": "2.13", "warmup": {"device": "cpu"}}) == "CPU"
    warmed = {"device": "cuda:0", "gpu": "NVIDIA H200", "gpu_memory_gb": 143.8}
    assert device_of({"torch": "2.13", "warmup": warmed}) == "cuda:0 (NVIDIA H200, 143.8 GB)"
    # A solo-pool worker describes its GPUs itself.
    gpu = {"index": 0, "name": "NVIDIA H200", "total_gb": 143.8}
    assert device_of({"cuda_devices": [gpu], "warmup": {}}) == "cuda:0 (NVIDIA H200, 143.8 GB)"
