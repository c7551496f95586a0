"""The chat-completions client: any OpenAI-compatible endpoint (OpenRouter, vLLM, Ollama, llama.cpp).

We do our own retries rather than the SDK's so the policy is explicit and tested: back off
and retry on 408, 429, 5xx, a dropped connection or an error event mid-stream, waiting as
long as Retry-After asks (up to `llm_retry_max_wait`); never retry 400/401/402/403, which
would only repeat the same refusal. 401/402/403 become `LLMAccountError`: one clear line
for the operator, a polite sentence for the person.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import openai

from agent.toolcalls import ToolCall
from core.errors import DreambotError
from core.settings import Settings

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
Sleep = Callable[[float], Awaitable[None]]
OnDelta = Callable[[str], Awaitable[None] | None]


class LLMError(DreambotError):
    """The model could not be reached. `user_message` is for chat, `operator_message` for logs."""

    def __init__(self, operator_message: str, user_message: str, status: int | None = None) -> None:
        super().__init__(operator_message)
        self.operator_message = operator_message
        self.user_message = user_message
        self.status = status


class LLMAccountError(LLMError):
    """401/402/403: the key is wrong, the account has no credits, or access is denied."""


class EmptyReply(DreambotError):
    """A 200 answer without a choice (seen from overloaded gateways): worth a retry."""


UNAVAILABLE = (
    "Sorry, I can't think right now — my language model isn't answering. Please try again in a minute."
)
ACCOUNT = (
    "Sorry, I can't chat at the moment: the bot's language-model account needs attention from "
    "its operator (they have been told). Commands like /imagine and /jobs still work."
)


@dataclass
class Completion:
    text: str
    native_calls: list[ToolCall] = field(default_factory=list)
    native_errors: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""


def retry_delay(headers: Mapping[str, str] | None, attempt: int, cap: float) -> float:
    """Seconds to wait before retry `attempt` (1-based): Retry-After if given, else backoff."""
    if headers is not None:
        ms = headers.get("retry-after-ms")
        if ms:
            try:
                return min(cap, max(0.0, float(ms) / 1000))
            except ValueError:
                pass
        after = headers.get("retry-after")
        if after:
            try:
                return min(cap, max(0.0, float(after)))
            except ValueError:
                parsed = email.utils.parsedate_to_datetime(after) if after else None
                if parsed is not None:
                    return min(cap, max(0.0, parsed.timestamp() - time.time()))
    # Exponential with full jitter, so many bot processes don't retry in lockstep.
    return min(cap, random.uniform(0.5, 1.0) * 0.5 * 2 ** (attempt - 1))


def account_error(status: int, base_url: str) -> LLMAccountError:
    why = {
        401: "rejected the API key (401 Unauthorized): check DREAMBOT_LLM_API_KEY",
        402: "refused for lack of credits (402 Payment Required): top up the account or change DREAMBOT_LLM_BASE_URL",
        403: "denied access (403 Forbidden): check that the key may use this model (DREAMBOT_LLM_MODEL)",
    }[status]
    return LLMAccountError(f"LLM endpoint {base_url} {why}", ACCOUNT, status)


def _headers(settings: Settings) -> dict[str, str]:
    headers = {}
    if settings.llm_app_url:
        headers["HTTP-Referer"] = settings.llm_app_url
    if settings.llm_app_title:
        headers["X-Title"] = settings.llm_app_title
    return headers


class LLMClient:
    """One `AsyncOpenAI` per bot process (or per test); `complete` is one model call."""

    def __init__(self, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> None:
        self.settings = settings
        self.sleep = sleep
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "not-needed"
        self.client = openai.AsyncOpenAI(
            base_url=settings.llm_base_url,
            api_key=key,  # local servers accept any key; the SDK insists on one
            timeout=settings.llm_timeout,
            max_retries=0,  # ours, below
            default_headers=_headers(settings),
        )
        # OpenRouter reports the cost of each call only when asked.
        self._extra_body = (
            {"usage": {"include": True}}
            if "openrouter.ai" in urlparse(settings.llm_base_url).netloc
            else None
        )

    async def close(self) -> None:
        await self.client.close()

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        on_delta: OnDelta | None = None,
        max_tokens: int = 1024,
    ) -> Completion:
        """One model call with retries. `on_delta` (if given) streams the text as it grows."""
        attempts = self.settings.llm_max_retries + 1
        for attempt in range(1, attempts + 1):
            headers: Mapping[str, str] | None = None  # the response's (openai's own httpx)
            try:
                if on_delta is None:
                    return await self._once(messages, tools, max_tokens)
                return await self._stream(messages, tools, max_tokens, on_delta)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in (401, 402, 403):
                    raise account_error(status, self.settings.llm_base_url) from exc
                if status not in RETRY_STATUSES:
                    raise LLMError(
                        f"LLM endpoint {self.settings.llm_base_url} refused the request ({status}): "
                        f"{_short(exc)}",
                        UNAVAILABLE,
                        status,
                    ) from exc
                headers = exc.response.headers
                reason = f"HTTP {status}"
            except (openai.APIConnectionError, openai.APIError, EmptyReply) as exc:
                # APIError without a status: an error event in the middle of a stream.
                reason = f"{type(exc).__name__}: {_short(exc)}"
            if attempt == attempts:
                raise LLMError(
                    f"LLM endpoint {self.settings.llm_base_url} failed {attempts} times ({reason})",
                    UNAVAILABLE,
                )
            delay = retry_delay(headers, attempt, self.settings.llm_retry_max_wait)
            log.warning("LLM call failed (%s); retry %d/%d in %.1fs", reason, attempt, attempts - 1, delay)
            await self.sleep(delay)
        raise AssertionError("unreachable")

    def _request(self, messages: list[dict[str, Any]], tools: Any, max_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(model=self.settings.llm_model, messages=messages, max_tokens=max_tokens)
        if tools:
            kwargs["tools"] = tools
        if self._extra_body:
            kwargs["extra_body"] = self._extra_body
        return kwargs

    async def _once(self, messages: list[dict[str, Any]], tools: Any, max_tokens: int) -> Completion:
        resp = await self.client.chat.completions.create(**self._request(messages, tools, max_tokens))
        if not resp.choices:
            raise EmptyReply("the endpoint returned no choices")
        msg = resp.choices[0].message
        out = Completion(text=msg.content or "", model=resp.model or self.settings.llm_model)
        for call in msg.tool_calls or []:
            fn = getattr(call, "function", None)
            if fn is None:
                continue
            _add_native(out, fn.name, fn.arguments)
        _add_usage(out, resp.usage)
        return out

    async def _stream(
        self, messages: list[dict[str, Any]], tools: Any, max_tokens: int, on_delta: OnDelta
    ) -> Completion:
        stream = await self.client.chat.completions.create(
            **self._request(messages, tools, max_tokens),
            stream=True,
            stream_options={"include_usage": True},
        )
        out = Completion(text="", model=self.settings.llm_model)
        parts: list[str] = []
        calls: dict[int, list[str]] = {}
        async for chunk in stream:
            if chunk.usage is not None:
                _add_usage(out, chunk.usage)
            if chunk.model:
                out.model = chunk.model
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    parts.append(delta.content)
                    result = on_delta("".join(parts))
                    if asyncio.iscoroutine(result):
                        await result
                for tc in delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, ["", ""])
                    if tc.function is not None:
                        slot[0] += tc.function.name or ""
                        slot[1] += tc.function.arguments or ""
        out.text = "".join(parts)
        for name, arguments in calls.values():
            _add_native(out, name, arguments)
        return out


def _add_native(out: Completion, name: str | None, arguments: str | None) -> None:
    try:
        args = json.loads(arguments) if arguments else {}
    except ValueError as exc:
        out.native_errors.append(f"the arguments of {name} are not valid JSON ({exc})")
        return
    if not name or not isinstance(args, dict):
        out.native_errors.append("a tool call had no name or its arguments were not an object")
        return
    out.native_calls.append(ToolCall(name, args))


def _add_usage(out: Completion, usage: Any) -> None:
    if usage is None:
        return
    out.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    out.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    cost = (getattr(usage, "model_extra", None) or {}).get("cost")
    try:
        out.cost_usd = float(cost) if cost is not None else 0.0
    except (TypeError, ValueError):
        out.cost_usd = 0.0


def _short(exc: Exception) -> str:
    return str(exc).replace("\n", " ")[:200]
