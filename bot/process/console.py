"""What `dreambot up` tells the person in the terminal: one line per part, nothing else.

Every part announces itself through one logger (`dreambot.up`): the web server when it
listens, each worker when it is ready (and on which device), each chat adapter when it
is connected, the LLM endpoint, the base model, restarts of a worker. Without `-v` the
terminal shows only those lines and errors; every log line of the bot process goes to
`DATA_DIR/logs/dreambot.log` and each worker's own output (Celery's banner and warnings
included) to `DATA_DIR/logs/<worker>.log`. With `-v` everything is printed as it comes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import IO, Any

from agent.photo_policy import is_local_endpoint
from core.logs import CONSOLE, setup_logging
from core.settings import Settings

OUR_PACKAGES = ("bot", "core", "agent", "gpu_worker", CONSOLE.split(".")[0])
BOT_LOG = "dreambot.log"
# What `from_pretrained` fetches for a known hub model (weights in fp32 safetensors, the
# safety checker included), so the first training can say how much it will download.
KNOWN_DOWNLOAD_GB = {"stable-diffusion-v1-5/stable-diffusion-v1-5": 5.5}

_console = logging.getLogger(CONSOLE)


def logs_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "logs"


class _TerminalFilter(logging.Filter):
    """The announcements, our own warnings and anyone's errors; not library chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == CONSOLE or record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and record.name.split(".")[0] in OUR_PACKAGES


class _TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.name != CONSOLE and record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_up_logging(settings: Settings, verbose: bool, terminal: IO[str] | None = None) -> Path | None:
    """Route the bot process's logs for `dreambot up`; the log folder, or None with -v."""
    _console.setLevel(logging.INFO)  # the lines are shown whatever DREAMBOT_LOG_LEVEL says
    if verbose:
        setup_logging(settings)
        return None
    folder = logs_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    # Line-buffered: `tail -f` sees each line as it is written.
    log_file = (folder / BOT_LOG).open("a", buffering=1, encoding="utf-8")
    setup_logging(settings, stream=log_file)
    logging.captureWarnings(True)  # library warnings go to the file, not the terminal
    handler = logging.StreamHandler(terminal or sys.stderr)
    handler.addFilter(_TerminalFilter())
    handler.setFormatter(_TerminalFormatter())
    logging.getLogger().addHandler(handler)
    return folder


# -- the lines --------------------------------------------------------------------------------


def chat_line(settings: Settings) -> str:
    """Which chat mode the bot is in (the built-in no-LLM mode will change this wording)."""
    url = settings.llm_base_url
    if settings.llm_api_key is None and not is_local_endpoint(url):
        return "chat: no LLM configured (DREAMBOT_LLM_API_KEY unset)"
    return f"chat: LLM {settings.llm_model} at {url}"


def platforms_line(settings: Settings) -> str | None:
    """A line when no chat platform is configured (each adapter announces its own connection)."""
    if settings.discord_token is None and settings.slack_bot_token is None:
        return (
            "discord, slack: not configured (set DREAMBOT_DISCORD_TOKEN or DREAMBOT_SLACK_BOT_TOKEN); "
            "the web playground works without them"
        )
    return None


def database_line(settings: Settings, revision: str | None) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    return f"database: {url} (schema {revision or 'not stamped'})"


def base_model_line(settings: Settings, hf_cache: Path | None = None) -> str:
    """Where the base model comes from, without touching the network."""
    name = settings.base_model
    if name.startswith("storage:"):
        return f"base model: {name} (published in storage; each worker copies it once to its model cache)"
    folder = Path(name).expanduser()
    if folder.is_dir():
        return f"base model: local folder {folder} ({_size(_folder_bytes(folder))})"
    if name.startswith((".", "/", "~")):
        return f"base model: local folder {folder} not found (DREAMBOT_BASE_MODEL)"
    cached = _hub_cache_bytes(name, hf_cache)
    if cached is None:
        return f"base model: {name} (huggingface_hub is not installed here; the workers fetch it)"
    if cached:
        return f"base model: {name} found in the Hugging Face cache ({_size(cached)})"
    known = KNOWN_DOWNLOAD_GB.get(name)
    size = f" ({known:g} GB)" if known else ""
    return f"base model: {name} not downloaded yet: the workers download it as they warm up{size}"


def _hub_cache_bytes(repo_id: str, cache_dir: Path | None) -> int | None:
    """Bytes of `repo_id` in the Hugging Face cache (0: not there); None without the library."""
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return None
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return 0
    return sum(r.size_on_disk for r in info.repos if r.repo_id == repo_id and r.repo_type == "model")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def device_of(row: dict[str, Any]) -> str:
    """'cuda:0 (NVIDIA H100, 80 GB)' or 'CPU' from a worker row: where its warm-up ran, else
    its machine description."""
    warmup = row.get("warmup") or {}
    if str(warmup.get("device", "")).startswith("cuda"):
        memory = f", {warmup['gpu_memory_gb']:g} GB" if warmup.get("gpu_memory_gb") is not None else ""
        return f"{warmup['device']} ({warmup.get('gpu', 'GPU')}{memory})"
    devices = row.get("cuda_devices") or []
    if warmup.get("device") == "cpu" or not devices:
        return "CPU"
    first = devices[0]
    memory = f", {first['total_gb']:g} GB" if first.get("total_gb") is not None else ""
    return f"cuda:{first.get('index', 0)} ({first.get('name', 'GPU')}{memory})"


NO_GPU_LINE = "GPU: none found: training and images run on the CPU (slow; a training takes hours)"
