"""Probes for bench/ack.py: stamped fakes, a slow CDN, a commit clock for Job rows, photos.

The fakes are the tests' own (tests/helpers/fake_discord.py, fake_slack.py), subclassed only
to stamp what they record with `time.perf_counter()` and to serve photos at a set speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image
from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

from core.models import Job
from tests.helpers.fake_discord import FakeDiscord
from tests.helpers.fake_slack import BOT_TOKEN, FakeSlack

CHUNK = 64 * 1024


# -- timing probes ------------------------------------------------------------------------------


class TimedLog(list):  # type: ignore[type-arg]
    """FakeDiscord's log, stamping each entry (gateway event sent, REST request arrived)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, float] = {}

    def append(self, item: Any) -> None:
        self.at[item.seq] = time.perf_counter()
        super().append(item)


class JobClock:
    """When each Job row was committed (visible to everyone else), from SQLAlchemy's hooks."""

    def __init__(self) -> None:
        self.committed: dict[int, float] = {}
        self._pending: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> JobClock:
        event.listen(Job, "after_insert", self._inserted)
        event.listen(Session, "after_commit", self._commit)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(Job, "after_insert", self._inserted)
        event.remove(Session, "after_commit", self._commit)

    def _inserted(self, _mapper: Any, _conn: Any, job: Job) -> None:
        with self._lock:
            self._pending.setdefault(id(object_session(job)), []).append(job.id)

    def _commit(self, session: Session) -> None:
        now = time.perf_counter()
        with self._lock:
            for job_id in self._pending.pop(id(session), []):
                self.committed[job_id] = now

    def new_since(self, known: set[int]) -> list[int]:
        with self._lock:
            return [j for j in self.committed if j not in known]


# -- slow file serving --------------------------------------------------------------------------


async def trickle(request: web.Request, data: bytes, content_type: str, rate: float) -> web.StreamResponse:
    """Send `data` at `rate` bytes/s (0: as fast as possible), as a CDN does with big files."""
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Content-Length": str(len(data))})
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with contextlib.suppress(ConnectionResetError, RuntimeError):  # the client stopped reading
        for i in range(0, len(data), CHUNK):
            await resp.write(data[i : i + CHUNK])
            if rate > 0:
                await asyncio.sleep(max(0.0, start + (i + CHUNK) / rate - loop.time()))
    return resp


class SlowCDN:
    """Discord's attachment CDN for FakeDiscord's uploads, slow, on a thread of its own."""

    def __init__(self, fake: FakeDiscord, rate: float) -> None:
        self.fake, self.rate = fake, rate
        self.requests: list[tuple[str, float]] = []  # (attachment id, arrival)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        aid = request.match_info["aid"]
        self.requests.append((aid, time.perf_counter()))
        data = self.fake.blobs.get(aid)
        if data is None:
            return web.Response(status=404)
        return await trickle(request, data, "image/jpeg", self.rate)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/attachments/{aid}/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> SlowCDN:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class BenchDiscord(FakeDiscord):
    """The fake Discord with a stamped log and attachments served by a SlowCDN."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.log = TimedLog()
        self.cdn = SlowCDN(self, rate)

    def start(self) -> BenchDiscord:
        self.cdn.start()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self.cdn.stop()

    def upload(
        self, filename: str, data: bytes, content_type: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        att = super().upload(filename, data, content_type, **kw)
        att["url"] = att["proxy_url"] = f"http://127.0.0.1:{self.cdn.port}/attachments/{att['id']}/{filename}"
        return att


class BenchSlack(FakeSlack):
    """The fake Slack with each recorded call stamped and private files served slowly."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.at: list[float] = []  # parallel to self.calls
        self.rate = 0.0

    def _record(self, method: str, args: dict[str, Any], token: str | None = None) -> None:
        with self._lock:
            super()._record(method, args, token)
            self.at.append(time.perf_counter())

    def stamp(self, predicate: Callable[[Any], bool]) -> float | None:
        with self._lock:
            return next((t for c, t in zip(self.calls, self.at, strict=True) if predicate(c)), None)

    def stamps(self, method: str, *, after: float) -> list[float]:
        with self._lock:
            return [t for c, t in zip(self.calls, self.at, strict=True) if c.method == method and t > after]

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["key"].split("-", 1)[-1]
        f = self.files.get(file_id)
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}" or f is None:
            return await super()._download(request)  # the sign-in page or a 404, recorded there
        self._record("download", {"file_id": file_id, "authorized": True})
        return await trickle(request, f.data, f.mimetype, self.rate)


def photo(seed: int, width: int, height: int, noise: float) -> bytes:
    """A photo-like JPEG: a colour gradient with a few sharp-edged shapes (so the photo coach
    finds detail at any size, as in a real photo) and sensor-like noise (which sets the size)."""
    rng = np.random.default_rng(seed)
    tile = rng.normal(0, noise, (256, 256, 3)).astype(np.float32)
    grain = np.tile(tile, (height // 256 + 1, width // 256 + 1, 1))[:height, :width]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    c = rng.uniform(20, 200, 3).astype(np.float32)
    base = np.stack([c[0] + x * 50 + y * 0, c[1] + y * 50 + x * 0, c[2] + (x + y) * 25], axis=2)
    for _ in range(80):
        cy, cx = rng.uniform(0, 1, 2)
        r = rng.uniform(0.01, 0.08)
        inside = (x - cx) ** 2 + ((y - cy) * height / width) ** 2 < r**2
        base = np.where(inside[..., None], rng.uniform(0, 255, 3).astype(np.float32), base)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()
