"""The LLM client against the fake server over real HTTP: retries, refusals, streaming, usage."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent.llm import ACCOUNT, LLMAccountError, LLMClient, LLMError, retry_delay
from core.settings import Settings
from tests.agent.conftest import with_llm
from tests.helpers.fake_llm import FakeLLM, Reply
from tests.helpers.profile import make_test_settings

MESSAGES = [{"role": "user", "content": "hello"}]


class Sleeps:
    """Records each wait and really waits it (Retry-After in tests is short)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        import asyncio

        self.waits.append(seconds)
        await asyncio.sleep(seconds)


@pytest.fixture
def settings(tmp_path: Path, fake_llm: FakeLLM) -> Settings:
    # The client needs no database.
    return with_llm(
        make_test_settings(tmp_path / "var"),
        fake_llm,
        llm_retry_max_wait=1.0,
        llm_app_url="https://example.org/bot",
    )


async def test_429_with_retry_after_then_success(settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.fail(429, {"Retry-After": "1"})
    fake_llm.say("Hi!", cost=0.0004)
    sleeps = Sleeps()
    client = LLMClient(settings, sleep=sleeps)
    try:
        done = await client.complete(MESSAGES)
    finally:
        await client.close()
    assert done.text == "Hi!" and done.cost_usd == pytest.approx(0.0004)
    assert (done.prompt_tokens, done.completion_tokens) == (120, 30)
    assert sleeps.waits == [1.0]
    assert len(fake_llm.requests) == 2
    headers = fake_llm.requests[0].headers
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["http-referer"] == "https://example.org/bot" and headers["x-title"] == "dreambot"
    assert fake_llm.requests[0].body["model"] == "google/gemma-3-27b-it"


async def test_server_errors_back_off_then_give_up(settings: Settings, fake_llm: FakeLLM) -> None:
    for _ in range(3):
        fake_llm.fail(503)
    sleeps = Sleeps()
    client = LLMClient(settings, sleep=sleeps)
    with pytest.raises(LLMError) as err:
        await client.complete(MESSAGES)
    await client.close()
    assert len(fake_llm.requests) == 3  # 1 + llm_max_retries
    assert len(sleeps.waits) == 2 and all(0 < w <= 1.0 for w in sleeps.waits)
    assert "failed 3 times" in err.value.operator_message
    assert "try again" in err.value.user_message


@pytest.mark.parametrize(("status", "hint"), [(401, "DREAMBOT_LLM_API_KEY"), (402, "credits"), (403, "403")])
async def test_account_errors_are_not_retried(
    settings: Settings, fake_llm: FakeLLM, status: int, hint: str
) -> None:
    fake_llm.fail(status)
    fake_llm.say("never reached")
    client = LLMClient(settings, sleep=Sleeps())
    with pytest.raises(LLMAccountError) as err:
        await client.complete(MESSAGES)
    await client.close()
    assert len(fake_llm.requests) == 1
    assert hint in err.value.operator_message and err.value.user_message == ACCOUNT
    assert "sk-test" not in err.value.operator_message


async def test_400_is_not_retried(settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.fail(400, error="context length exceeded")
    client = LLMClient(settings, sleep=Sleeps())
    with pytest.raises(LLMError) as err:
        await client.complete(MESSAGES)
    await client.close()
    assert len(fake_llm.requests) == 1 and err.value.status == 400


async def test_streaming_with_keepalives_and_an_error_event_mid_stream(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    text = "Here is a long enough reply to arrive in several pieces."
    fake_llm.add(Reply(text=text, stream_error_after=3), Reply(text=text, cost=0.001))
    seen: list[str] = []
    client = LLMClient(settings, sleep=Sleeps())
    done = await client.complete(MESSAGES, on_delta=seen.append)
    await client.close()
    assert done.text == text and done.cost_usd == pytest.approx(0.001) and done.completion_tokens == 30
    assert len(fake_llm.requests) == 2 and fake_llm.requests[1].body["stream"] is True
    assert fake_llm.requests[1].body["stream_options"] == {"include_usage": True}
    # The broken attempt showed three pieces, the retry the whole reply growing to the end.
    assert seen[:3] == [text[:6], text[:12], text[:18]] and seen[-1] == text
    assert len(seen) > 5


async def test_native_tool_calls_are_read_streaming_or_not(settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.native("job_status", {"job_id": 4})
    fake_llm.add(
        Reply(
            tool_calls=[
                {"name": "cancel_job", "arguments": '{"job_id": 5}'},
                {"name": "job_status", "arguments": "{broken"},
            ]
        )
    )
    client = LLMClient(settings, sleep=Sleeps())
    first = await client.complete(MESSAGES, tools=[{"type": "function", "function": {"name": "job_status"}}])
    second = await client.complete(MESSAGES, on_delta=lambda _: None)
    await client.close()
    assert [(c.name, c.arguments) for c in first.native_calls] == [("job_status", {"job_id": 4})]
    assert fake_llm.requests[0].body["tools"][0]["function"]["name"] == "job_status"
    assert [(c.name, c.arguments) for c in second.native_calls] == [("cancel_job", {"job_id": 5})]
    assert second.native_errors and "not valid JSON" in second.native_errors[0]


def test_retry_delay_reads_every_form_of_retry_after() -> None:
    assert retry_delay(httpx.Headers({"retry-after": "7"}), 1, 30) == 7
    assert retry_delay(httpx.Headers({"retry-after-ms": "250"}), 1, 30) == 0.25
    assert retry_delay(httpx.Headers({"retry-after": "120"}), 1, 30) == 30  # capped
    assert 0 <= retry_delay(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}), 1, 30) <= 30
    assert 0.25 <= retry_delay(None, 1, 30) <= 0.5 and 1.0 <= retry_delay(None, 3, 30) <= 2.0
