"""Every `DREAMBOT_*` setting, typed, with embedded defaults for one machine.

One `Settings` class is the only place configuration is read. A wrong value stops
start-up with one line naming the variable and what it expects (`SettingsError`),
and settings that would be unsafe in production are refused rather than guessed.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import DreambotError

ENV_PREFIX = "DREAMBOT_"
OPENROUTER_URL = "https://openrouter.ai/api/v1"
BROKER_SCHEMES = {"filesystem", "redis", "rediss", "amqp", "amqps", "pyamqp", "memory"}
DATABASE_SCHEMES = {"sqlite", "postgresql"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class SettingsError(DreambotError):
    """A setting is missing or wrong; the message names it and says what it expects."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    # -- where things live --------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="folder for the embedded database, broker and storage")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///<data_dir>/dreambot.db")
    broker_url: str = Field("", description="Celery broker; default filesystem:// under <data_dir>/broker")
    storage_url: str = Field("", description="a folder or s3://bucket/prefix; default <data_dir>/storage")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2, …) for s3:// storage"
    )
    s3_region: str | None = Field(None, description="S3 region for s3:// storage")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key id")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key")
    database_schema: str | None = Field(None, description="PostgreSQL schema (search_path) to use")
    queue_prefix: str = Field("", description="prefix for the Celery queue names (one deployment per prefix)")

    # -- logging --------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="least severe log level written (DEBUG, INFO, WARNING, ERROR)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: a line for people; json: one JSON object a line, with job_id"
    )

    # -- web server (playground + admin dashboard) ----------------------------------------
    web_host: str = Field("127.0.0.1", description="address the web server (playground + /admin) listens on")
    web_port: int = Field(8080, ge=0, le=65535, description="port of the web server")
    session_secret: SecretStr | None = Field(
        None,
        description="cookie-signing secret, ≥32 chars; required when WEB_HOST is not loopback (else generated into DATA_DIR)",
    )
    trusted_proxies: str = Field(
        "",
        description="comma-separated addresses/networks of reverse proxies whose X-Forwarded-For/-Proto are believed (default: none)",
    )
    console_database_url: str = Field(
        "",
        description="database URL for the dashboard's SQL console; on PostgreSQL a read-only role (`dreambot admin console-role` prints it), else the console is off",
    )
    metrics_token: SecretStr | None = Field(
        None, description="bearer token Prometheus must send for /metrics (default: no token asked)"
    )
    console_time_limit: float = Field(5.0, gt=0, description="seconds one SQL console statement may run")
    console_row_limit: int = Field(1000, ge=1, description="rows the SQL console shows (and exports) at most")
    console_byte_limit: int = Field(
        2_000_000, ge=10_000, description="bytes of results the SQL console shows (and exports) at most"
    )

    # -- LLM (any OpenAI-compatible endpoint) ----------------------------------------------
    llm_base_url: str = Field(
        OPENROUTER_URL,
        description="OpenAI-compatible endpoint: OpenRouter, vLLM (http://host:8000/v1), Ollama (http://host:11434/v1), llama.cpp",
    )
    llm_api_key: SecretStr | None = Field(
        None, description="API key for the LLM endpoint (OpenRouter: sk-or-…)"
    )
    llm_model: str = Field(
        "google/gemma-3-27b-it", description="model name at that endpoint (Ollama: gemma3:27b)"
    )
    llm_native_tools: bool = Field(
        False, description="send tools= and accept native tool_calls (only for endpoints that support them)"
    )
    llm_timeout: float = Field(60.0, gt=0, description="seconds to wait for one LLM answer")
    llm_daily_spend_cap_usd: float = Field(
        5.0, ge=0, description="LLM spend cap per day for the whole deployment (USD)"
    )
    llm_max_retries: int = Field(3, ge=0, description="retries on 408/429/5xx and dropped connections")
    llm_retry_max_wait: float = Field(30.0, ge=0, description="longest Retry-After wait honoured (seconds)")
    llm_context_tokens: int = Field(32000, ge=2000, description="token budget for a thread's history")
    llm_app_url: str | None = Field(None, description="sent as HTTP-Referer (OpenRouter attribution)")
    llm_app_title: str | None = Field("dreambot", description="sent as X-Title (OpenRouter attribution)")
    llm_send_photos: Literal["remote", "local-only", "never"] = Field(
        "remote",
        description="which LLM endpoints see people's photos: remote (any), local-only (only a "
        "loopback or private-network LLM_BASE_URL; a remote one gets a text placeholder), never",
    )

    # -- chat platforms ---------------------------------------------------------------------
    discord_token: SecretStr | None = Field(
        None, description="Discord bot token (enables the Discord adapter)"
    )
    discord_api_base: str = Field(
        "https://discord.com/api/v10",
        description="Discord REST API base URL (tests point it at a local fake)",
    )
    discord_gateway_url: str | None = Field(
        None, description="Discord gateway websocket URL (default: asked from the API)"
    )
    discord_message_content: bool = Field(
        True,
        description="ask for the privileged message-content intent (answer every message in the "
        "bot's threads); without it, or when Discord refuses it, only mentions and DMs are answered",
    )
    discord_max_upload_bytes: int | None = Field(
        None, gt=0, description="bytes of attachments per Discord message (default: the server's limit)"
    )
    slack_bot_token: SecretStr | None = Field(
        None, description="Slack bot token xoxb-… (enables the Slack adapter)"
    )
    slack_app_token: SecretStr | None = Field(
        None, description="Slack app-level token xapp-… for Socket Mode"
    )
    slack_signing_secret: SecretStr | None = Field(
        None, description="Slack signing secret for HTTP mode (request verification)"
    )
    slack_api_url: str = Field(
        "https://slack.com/api/", description="Slack Web API base URL (tests point it at a local fake)"
    )
    slack_mode: Literal["socket", "http"] = Field(
        "socket",
        description="socket: Socket Mode (needs SLACK_APP_TOKEN, no public URL); "
        "http: Slack POSTs to /slack/events (needs SLACK_SIGNING_SECRET)",
    )
    slack_http_host: str = Field("127.0.0.1", description="HTTP mode: address the Slack endpoint listens on")
    slack_http_port: int = Field(3000, ge=0, le=65535, description="HTTP mode: port of the Slack endpoint")

    # -- diffusion ------------------------------------------------------------------------
    base_model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Stable Diffusion base model: a hub id (downloaded once per host on first use, or ahead "
        "with `dreambot model pull`), a local folder, or storage:<key prefix> (published with `dreambot "
        "model publish`; copied once to each worker's model cache)",
    )
    train_config: Path | None = Field(
        None, description="YAML/JSON file with deployment-wide training defaults"
    )
    train_time_limit: int = Field(2 * 3600, gt=0, description="seconds a training may run")
    sample_time_limit: int = Field(300, gt=0, description="seconds a sampling job may run")
    wandb_project: str | None = Field(
        None,
        description="Weights & Biases project for training metrics (used only when the wandb "
        "package is installed; TensorBoard event files are always written)",
    )
    nsfw_filter: bool = Field(True, description="run the safety checker and never post blocked images")

    # -- retention (core/retention.py; the bot process cleans up every RETENTION_INTERVAL) --
    retention_keep_training_photos: bool = Field(
        False,
        description="keep training photos after the model is trained (default: deleted once "
        "trained, unless the person chose to keep them)",
    )
    retention_images_days: int = Field(90, ge=0, description="days generated images are kept (0: forever)")
    retention_conversation_days: int = Field(
        30, ge=0, description="days chat history and its photos are kept (0: forever)"
    )
    retention_failed_days: int = Field(
        7, ge=0, description="days leftovers of failed or cancelled jobs are kept (0: forever)"
    )
    retention_interval: float = Field(
        3600.0, ge=0, description="seconds between retention clean-ups in the bot process (0: off)"
    )
    # -- sampling (gpu_worker/pipelines.py, gpu_worker/lora_cache.py) ------------------------
    lora_cache_dir: Path | None = Field(
        None, description="local LoRA file cache; default <data_dir>/lora-cache"
    )
    lora_cache_bytes: int = Field(4 * 1024**3, ge=0, description="LoRA disk cache size limit in bytes")
    model_cache_dir: Path | None = Field(
        None,
        description="local copies of base models (storage: ones, and hub ones under hub/); default "
        "<data_dir>/model-cache",
    )
    model_cache_bytes: int = Field(
        40 * 1024**3, ge=0, description="base model disk cache size limit in bytes (fit two models at least)"
    )
    resident_adapters: int = Field(
        8,
        ge=1,
        description="people's LoRAs kept in memory by a sampling worker (active ones merged into the weights)",
    )
    sample_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the UNet and VAE decoder (and on a GPU replay them as CUDA graphs): "
        "auto = on a GPU, eager on the CPU; on; off (also true/false)",
    )
    sample_cuda_graphs: bool = Field(
        True, description="with compile on a GPU: replay each warmed image shape as one CUDA graph per step"
    )
    sample_warm: str = Field(
        "1,2,3,4",
        description="shapes a sampling worker compiles before its first job: batch sizes at the model's "
        "native size and/or `upscale` (a 2x variation); any other shape is drawn eager at once while it "
        "compiles in the background",
    )
    sample_warm_later: str = Field(
        "upscale", description="shapes compiled in the background right after the worker is ready (same form)"
    )
    compile_cache: bool = Field(
        True,
        description="keep torch.compile's artifacts in storage (compile-cache/), so a graph compiles "
        "once per fleet and a restarted worker is warm in seconds",
    )

    # -- the photo coach (core/photo_quality.py): what /train points out before training ----
    photo_min_sharpness: float = Field(
        0.0015,
        ge=0,
        description="a photo whose subject area has less detail than this (variance of the Laplacian "
        "on a copy 512 px tall) is called blurry",
    )
    photo_blur_ratio: float = Field(
        0.3,
        ge=0,
        le=1,
        description="a photo with less than this share of the set's median sharpness is called blurry",
    )
    photo_dark_share: float = Field(
        0.6, gt=0, le=1, description="share of nearly black pixels (in the crop) that makes a photo too dark"
    )
    photo_bright_share: float = Field(
        0.4,
        gt=0,
        le=1,
        description="share of blown-out white pixels (in the crop) that makes a photo overexposed",
    )
    photo_duplicate_distance: int = Field(
        8,
        ge=0,
        le=64,
        description="photos whose perceptual hashes (64 bits) differ in at most this many bits are copies; "
        "only the sharpest of them is trained on",
    )
    photo_min_crop_side: int = Field(
        384, ge=1, description="pixels the square training crop should have at least (training works at 512)"
    )
    photo_min_distinct: int = Field(
        3,
        ge=1,
        description="different photos (copies removed) below which the coach warns (at least 3 are always needed)",
    )

    # -- job lifecycle timings (seconds) ----------------------------------------------------
    heartbeat_interval: float = Field(10.0, gt=0, description="seconds between a running job's heartbeats")
    lease_timeout: float = Field(
        120.0,
        gt=0,
        description="a running job silent this long is lost; PostgreSQL drops a silent host's connections within about this too",
    )
    resend_after: float = Field(60.0, gt=0, description="a queued, unclaimed job is re-sent after this")
    sweep_interval: float = Field(15.0, gt=0, description="seconds between sweeper passes")
    broker_poll_interval: float = Field(0.2, gt=0, description="filesystem/Redis polling")
    max_attempts: int = Field(3, ge=1, description="attempts a job gets before it fails for good")

    # -- default quotas per person (admins override per person) --------------------------
    max_concurrent_jobs: int = Field(
        2, ge=0, description="default: jobs a person may have queued or running at once"
    )
    trainings_per_day: int = Field(3, ge=0, description="default: trainings a person may start per 24 hours")
    images_per_day: int = Field(200, ge=0, description="default: images a person may generate per 24 hours")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, v: Any, info: Any) -> Any:
        if not isinstance(v, str):
            return v
        return v.upper() if info.field_name == "log_level" else v.lower()

    @field_validator("sample_compile", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        # It was a bool once: true/false (and 1/0, yes/no) still mean on/off.
        words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
        if isinstance(v, bool):
            return "on" if v else "off"
        return words.get(v.strip().lower(), v.strip().lower()) if isinstance(v, str) else v

    @field_validator("sample_warm", "sample_warm_later")
    @classmethod
    def _warm_shapes(cls, v: str) -> str:
        items = [item.strip().lower() for item in v.split(",") if item.strip()]
        for item in items:
            if item != "upscale" and not (item.isdigit() and 1 <= int(item) <= 8):
                raise ValueError("expected batch sizes 1-8 and/or `upscale`, comma-separated (or empty)")
        return ",".join(items)

    @field_validator("database_url", "console_database_url")
    @classmethod
    def _database_url(cls, v: str) -> str:
        if not v:
            return v
        scheme = v.split(":", 1)[0].split("+", 1)[0]
        if "://" not in v or scheme not in DATABASE_SCHEMES:
            raise ValueError("expected sqlite:///path/to/file.db or postgresql+psycopg://user@host:5432/db")
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if v and urlparse(v).scheme not in BROKER_SCHEMES:
            raise ValueError("expected filesystem://, redis://host:6379/0 or amqp://user:pass@host:5672//")
        return v

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, v: str) -> str:
        scheme = urlparse(v).scheme
        if v.startswith("s3://") and not urlparse(v).netloc:
            raise ValueError("expected s3://bucket/prefix")
        if scheme not in {"", "s3", "file"} and len(scheme) > 1:  # len 1: a Windows drive letter
            raise ValueError("expected a folder path or s3://bucket/prefix")
        return v

    @field_validator("llm_base_url", "discord_api_base", "slack_api_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if urlparse(v).scheme not in {"http", "https"}:
            raise ValueError("expected an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        # Behind a public address the dashboard login must survive restarts and be
        # unguessable, so a generated per-folder secret is only good enough on loopback.
        exposed = self.web_host not in LOOPBACK_HOSTS
        if exposed and (self.session_secret is None or len(self.session_secret.get_secret_value()) < 32):
            raise ValueError(
                "DREAMBOT_SESSION_SECRET: needs at least 32 random characters when "
                f"DREAMBOT_WEB_HOST={self.web_host} is not a loopback address"
            )
        return self

    # -- derived values -------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dreambot.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def queue_name(self, base: str) -> str:
        return f"{self.queue_prefix}{base}"

    def session_secret_value(self) -> str:
        """The cookie-signing secret: the configured one, else one kept in the data folder."""
        if self.session_secret is not None:
            return self.session_secret.get_secret_value()
        path = self.data_dir / "session_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


def _describe(error: ErrorDetails) -> str:
    loc = error.get("loc") or ()
    name = f"{ENV_PREFIX}{str(loc[0]).upper()}" if loc else ""
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if message.startswith(ENV_PREFIX):  # model-level checks already name their setting
        return message
    got = error.get("input")
    shown = "" if got is None or isinstance(got, dict) else f" (got {str(got)[:60]!r})"
    return f"{name}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and `.env`; raise `SettingsError` on a bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors())) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests build their own with `load_settings`."""
    return load_settings()
