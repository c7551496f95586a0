"""Which chat mode a deployment is in: the LLM agent, or the built-in basic mode.

An LLM counts as configured when it has a key, or when `DREAMBOT_LLM_BASE_URL` was pointed
away from the default (OpenRouter, which always needs a key) — a local vLLM, Ollama or
llama.cpp server needs none. Without one, every message is answered by the deterministic
basic mode (`agent/basic_mode.py`); with one, basic mode steps in only while it fails.
"""

from __future__ import annotations

from urllib.parse import urlparse

from core.settings import Settings

DEFAULT_LLM_BASE_URL = str(Settings.model_fields["llm_base_url"].default)
ENABLE_HINT = (
    "set DREAMBOT_LLM_API_KEY (OpenRouter) or DREAMBOT_LLM_BASE_URL (a local vLLM/Ollama) "
    "for a smarter assistant"
)


def llm_configured(settings: Settings) -> bool:
    if settings.llm_api_key is not None and settings.llm_api_key.get_secret_value().strip():
        return True
    return settings.llm_base_url.rstrip("/") != DEFAULT_LLM_BASE_URL.rstrip("/")


def chat_status(settings: Settings) -> str:
    """One line saying how chat works here, for `dreambot up` and the playground."""
    if llm_configured(settings):
        host = urlparse(settings.llm_base_url).netloc or settings.llm_base_url
        return f"LLM {settings.llm_model} at {host} (basic mode while it does not answer)"
    return f"basic mode, no LLM configured ({ENABLE_HINT})"
