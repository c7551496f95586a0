"""Running the real Slack adapter against the fake Slack in a test, and the world it needs.

`SlackBot` starts `SlackAdapter.run` (Socket Mode or HTTP) in the test's event loop with a
`ConversationService` that also keeps every reply it returned, so a test can wait until
all deliveries of an event were handled (duplicates included) before counting jobs.
Delivery passes are run by the test (`deliver()`), so what gets posted when is decided by
the test, not by a timer.
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Callable
from typing import Any

from PIL import Image as PILImage
from pydantic import SecretStr
from sqlalchemy import func, select

from bot.chat.delivery import Delivery
from bot.chat.service import ConversationService, Origin, Reply, Upload
from bot.platforms.slack.adapter import SlackAdapter
from core import jobs
from core.db import session_scope
from core.job_results import SampleResult
from core.models import Job, Subject, User
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.fake_slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack


def slack_settings(base: Settings, fake: FakeSlack, llm: FakeLLM | None = None, **extra: Any) -> Settings:
    values: dict[str, Any] = dict(
        slack_bot_token=SecretStr(BOT_TOKEN),
        slack_app_token=SecretStr(APP_TOKEN),
        slack_signing_secret=SecretStr(SIGNING_SECRET),
        slack_api_url=fake.api_url,
    )
    if llm is not None:
        values.update(llm_base_url=llm.url, llm_api_key=SecretStr("sk-test"), llm_max_retries=0)
    values.update(extra)
    return base.model_copy(update=values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Wait until `predicate()` is truthy (order of events, not speed, is what tests assert)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class RecordingService(ConversationService):
    """The real service; it also keeps (method, origin, reply) for every call that returned."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.handled: list[tuple[str, Origin, Reply]] = []

    async def chat(self, origin: Origin, text: str, uploads: list[Upload]) -> Reply:
        return self._keep("chat", origin, await super().chat(origin, text, uploads))

    async def train(
        self, origin: Origin, name: str, class_noun: str, uploads: list[Upload], **kw: Any
    ) -> Reply:
        return self._keep("train", origin, await super().train(origin, name, class_noun, uploads, **kw))

    async def imagine(self, origin: Origin, prompt: str, n: int = 4) -> Reply:
        return self._keep("imagine", origin, await super().imagine(origin, prompt, n))

    async def press(self, origin: Origin, custom_id: str) -> Reply:
        return self._keep("press", origin, await super().press(origin, custom_id))

    async def quota(self, origin: Origin) -> Reply:
        return self._keep("quota", origin, await super().quota(origin))

    def _keep(self, method: str, origin: Origin, reply: Reply) -> Reply:
        self.handled.append((method, origin, reply))
        return reply

    def replies(self, method: str) -> list[Reply]:
        return [r for m, _, r in self.handled if m == method]


class SlackBot:
    """`async with SlackBot(settings, fake) as bot:` — the adapter connected and serving."""

    def __init__(self, settings: Settings, fake: FakeSlack) -> None:
        self.settings = settings
        self.fake = fake
        self.service = RecordingService(settings)
        self.adapter = SlackAdapter(settings, self.service)
        self.delivery = Delivery(settings, {"slack": self.adapter.poster})
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SlackBot:
        before = self.fake.connections
        self._task = asyncio.create_task(self.adapter.run(self._stop))
        if self.settings.slack_mode == "socket":
            await eventually(lambda: self.fake.connections > before, "the Socket Mode connection")
        else:
            port = self.settings.slack_http_port
            await eventually(lambda: _port_open(port), "the HTTP endpoint")
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 30)

    async def send(self, kind: str, payload: dict[str, Any], **kw: Any) -> str:
        """One Socket Mode envelope; returns once the adapter acknowledged it."""
        envelope_id = await self.fake.send_envelope(kind, payload, **kw)
        await eventually(lambda: self.fake.acked(envelope_id), f"the ack of {envelope_id}")
        return envelope_id

    async def deliver(self) -> None:
        await self.delivery.pass_once()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# -- the world: people, subjects, photos, finished jobs --------------------------------------------


def add_slack_user_with_subject(settings: Settings, user_id: str, name: str = "Rex") -> int:
    """A Slack person who already trained `name` (a dog); returns the subject id."""
    with session_scope(settings) as s:
        user = User(platform="slack", platform_user_id=user_id, display_name=user_id)
        s.add(user)
        s.flush()
        subject = Subject(
            owner_id=user.id,
            name=name,
            token="zwx",
            class_noun="dog",
            base_model=settings.base_model,
            method="lora",
            status="ready",
            artifact_key="subjects/x/zwx.safetensors",
            artifact_sha256="0" * 64,
        )
        s.add(subject)
        s.flush()
        return subject.id


def photo(
    width: int = 640, height: int = 512, fmt: str = "JPEG", color: tuple[int, int, int] = (200, 120, 40)
) -> bytes:
    """A photo of one colour with a dotted texture: sharp enough for the photo coach
    (a flat colour would be "blurry"); different colours are different photos."""
    image = PILImage.new("RGB", (width, height), color)
    for x in range(0, width, 16):
        for y in range(0, height, 16):
            image.putpixel((x, y), ((x * 7) % 256, (y * 5) % 256, (x + y) % 256))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def finish_sample_job(settings: Settings, job_id: int, n: int = 2) -> list[int]:
    """Do a sampling worker's part in-test: claim, store PNGs, add the images, finish."""
    lease = jobs.claim(settings, job_id, "test-worker")
    assert lease is not None
    storage = storage_from_settings(settings)
    ids = []
    for i in range(n):
        key = f"images/{job_id}/{i}.png"
        storage.put(key, photo(64, 64, "PNG", (10 * i, 80, 160)))
        ids.append(jobs.add_image(settings, lease, storage_key=key, seed=i, prompt="p", width=64, height=64))
    jobs.finish(settings, lease, SampleResult(image_ids=ids))
    return ids


def job_rows(settings: Settings) -> list[Job]:
    with session_scope(settings) as s:
        rows = list(s.scalars(select(Job).order_by(Job.id)))
        s.expunge_all()
        return rows


def count(settings: Settings, model: type) -> int:
    with session_scope(settings) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)
