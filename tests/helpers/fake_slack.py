"""A local fake of the Slack Web API and Socket Mode, for the real `slack-bolt` / `slack_sdk`.

It runs an aiohttp server on its own thread and event loop, so the bot under test (in the
test's loop) talks to it over real HTTP and a real websocket. What it serves:

- Web API methods under `/api/` (the `AsyncWebClient(base_url=…)` the app is given):
  auth.test, apps.connections.open (app token; returns this server's `ws://` URL),
  chat.postMessage / update / delete / postEphemeral, views.open,
  conversations.history / replies (metadata only with `include_all_metadata`, as Slack does),
  files.getUploadURLExternal + the upload URL + files.completeUploadExternal (what
  `files_upload_v2` calls), files.delete.
- Private file downloads (`url_private_download`) that need the bot token as a bearer,
  and answer a login page (HTML, status 200) without it, as Slack does.
- `response_url`s for slash commands.
- A Socket Mode websocket that says hello, sends envelopes and records the acks.

Every request is recorded in `calls`, in order (downloads as "download", uploads as
"upload", socket acks as "ack", response_url posts as "respond"), for assertions.
Payload builders for what Slack sends are in tests/helpers/fake_slack_payloads.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret"
TEAM_ID = "T0FAKE"
BOT_USER_ID = "UBOT0001"
BOT_ID = "BBOT0001"
APP_ID = "AFAKE0001"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None = None


@dataclass
class StoredFile:
    id: str
    name: str
    data: bytes
    mimetype: str = "image/png"
    title: str = ""
    uploaded: bool = True
    chunked: bool = False  # served without a Content-Length

    def as_event_file(self, base: str) -> dict[str, Any]:
        """The file object Slack puts into events and view submissions."""
        url = f"{base}files-pri/{TEAM_ID}-{self.id}/{self.name}"
        return {
            "id": self.id,
            "name": self.name,
            "title": self.title or self.name,
            "mimetype": self.mimetype,
            "filetype": self.name.rsplit(".", 1)[-1].lower(),
            "size": len(self.data),
            "url_private": url,
            "url_private_download": url + "?download=1",
        }


@dataclass
class FakeSlack:
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # channel -> messages
    files: dict[str, StoredFile] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # file id -> bytes written to a download
    ephemerals: list[dict[str, Any]] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = field(default_factory=dict)
    connections: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk reads conversations.* with GET
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{key}/{name}", self._download)
        app.router.add_post("/respond/{rid}", self._respond)
        app.router.add_get("/link/", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def _stop() -> None:
            for ws in list(self._sockets):
                await ws.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def api_url(self) -> str:
        return self.base + "api/"

    # -- test-side helpers ---------------------------------------------------------------------

    def add_user_file(
        self, name: str, data: bytes, mimetype: str = "image/jpeg", declared_size: int | None = None
    ) -> dict[str, Any]:
        """A file a person shared; returns the object events and view submissions carry.
        `declared_size`: the size its "size" field claims; then it is served chunked, so
        only counting while reading can tell how big it really is."""
        with self._lock:
            f = StoredFile(self._new_id("F"), name, data, mimetype, chunked=declared_size is not None)
            self.files[f.id] = f
        obj = f.as_event_file(self.base)
        return obj if declared_size is None else {**obj, "size": declared_size}

    def add_message(self, channel: str, **fields: Any) -> dict[str, Any]:
        """Put a message into a channel as if it had been posted earlier (restart scenarios)."""
        with self._lock:
            msg = {"type": "message", "ts": self._new_ts(), **fields}
            self.messages.setdefault(channel, []).append(msg)
            return msg

    def fail_next(
        self, method: str, error: str, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        """Make the next call of `method` answer `{"ok": false, "error": error}`."""
        with self._lock:
            self.failures.setdefault(method, []).append(
                (status, {"ok": False, "error": error}, headers or {})
            )

    def methods(self, *names: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if not names or c.method in names]

    def names(self) -> list[str]:
        with self._lock:
            return [c.method for c in self.calls]

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages.get(channel, []) if m["ts"] == ts or m.get("thread_ts") == ts]

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        with self._lock:
            return next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)

    async def send_envelope(
        self, kind: str, payload: dict[str, Any], *, envelope_id: str | None = None, retry_attempt: int = 0
    ) -> str:
        """Send one Socket Mode envelope to the newest connection; returns its envelope id."""
        envelope_id = envelope_id or f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }

        async def _send() -> None:
            await self._sockets[-1].send_str(json.dumps(envelope))

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_send(), self._loop))
        return envelope_id

    def acked(self, envelope_id: str) -> bool:
        return any(c.args.get("envelope_id") == envelope_id for c in self.methods("ack"))

    # -- server side --------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def _new_ts(self) -> str:
        n = next(self._clock)
        return f"{1_700_000_000 + n}.{n:06d}"

    def _record(self, method: str, args: dict[str, Any], token: str | None = None) -> None:
        with self._lock:
            self.calls.append(Call(method, args, token))

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(dict(parse_qsl((await request.read()).decode())))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.pop("token", None)
        self._record(method, args, token)
        with self._lock:
            queued = self.failures.get(method)
            if queued:
                status, body, headers = queued.pop(0)
                return web.json_response(body, status=status, headers=headers)
        want = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != want:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(
            self, "_m_" + method.replace(".", "_"), None
        )
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        with self._lock:
            return web.json_response(handler(args))

    # Web API methods (called with the lock held) ------------------------------------------

    def _m_auth_test(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "dreambot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={self._new_id('tk')}"}

    def _channel(self, args: dict[str, Any]) -> str:
        return str(args.get("channel") or args.get("channel_id") or "")

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        msg: dict[str, Any] = {
            "type": "message",
            "ts": self._new_ts(),
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "text": args.get("text", ""),
            "blocks": _json(args.get("blocks")) or [],
        }
        if args.get("thread_ts"):
            msg["thread_ts"] = args["thread_ts"]
        if args.get("metadata"):
            msg["metadata"] = _json(args["metadata"])
        self.messages.setdefault(channel, []).append(msg)
        return {"ok": True, "channel": channel, "ts": msg["ts"], "message": msg}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self.message(self._channel(args), str(args.get("ts")))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        msg["text"] = args.get("text", msg.get("text", ""))
        if "blocks" in args:
            msg["blocks"] = _json(args["blocks"]) or []
        if args.get("metadata"):
            msg["metadata"] = _json(args["metadata"])
        msg["edited"] = {"user": BOT_USER_ID, "ts": self._new_ts()}
        return {"ok": True, "channel": self._channel(args), "ts": msg["ts"], "text": msg["text"]}

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        msg = self.message(channel, str(args.get("ts")))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        self.messages[channel].remove(msg)
        return {"ok": True, "channel": channel, "ts": msg["ts"]}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ephemerals.append(dict(args))
        return {"ok": True, "message_ts": self._new_ts()}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        view = {
            **(_json(args.get("view")) or {}),
            "id": self._new_id("V"),
            "app_id": APP_ID,
            "team_id": TEAM_ID,
        }
        self.views.append(view)
        return {"ok": True, "view": view}

    def _m_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        rows = [
            m for m in self.messages.get(self._channel(args), []) if m.get("thread_ts", m["ts"]) == m["ts"]
        ]
        return self._page(list(reversed(rows)), args)  # newest first, as Slack lists them

    def _m_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        rows = self.thread(self._channel(args), str(args.get("ts")))
        if not rows:
            return {"ok": False, "error": "thread_not_found"}
        return self._page(rows, args)

    def _page(self, rows: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        with_meta = str(args.get("include_all_metadata", "")).lower() in {"1", "true"}
        page = [
            m if with_meta else {k: v for k, v in m.items() if k != "metadata"}
            for m in rows[start : start + limit]
        ]
        more = start + limit < len(rows)
        return {
            "ok": True,
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("filename") or not str(args.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        f = StoredFile(self._new_id("F"), str(args["filename"]), b"", uploaded=False)
        self.files[f.id] = f
        return {"ok": True, "upload_url": f"{self.base}upload/{f.id}", "file_id": f.id}

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        wanted = _json(args.get("files")) or []
        stored = [self.files.get(str(w.get("id"))) for w in wanted]
        if not stored or any(f is None or not f.uploaded for f in stored):
            return {"ok": False, "error": "file_not_found"}
        for w, f in zip(wanted, stored, strict=True):
            assert f is not None
            f.title = str(w.get("title") or f.name)
        objs = [{"id": f.id, "name": f.name, "title": f.title, "size": len(f.data)} for f in stored if f]
        channel = self._channel(args)
        if channel:  # shared: a message with the files appears in the channel / thread
            msg: dict[str, Any] = {
                "type": "message",
                "subtype": "file_share",
                "ts": self._new_ts(),
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "text": args.get("initial_comment", ""),
                "files": objs,
            }
            if args.get("thread_ts"):
                msg["thread_ts"] = args["thread_ts"]
            self.messages.setdefault(channel, []).append(msg)
        return {"ok": True, "files": objs}

    def _m_files_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.files.pop(str(args.get("file")), None) is None:
            return {"ok": False, "error": "file_not_found"}
        for msgs in self.messages.values():
            for m in msgs:
                if "files" in m:
                    m["files"] = [f for f in m["files"] if f["id"] != args.get("file")]
        return {"ok": True}

    # Other endpoints ---------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        data = await request.read()
        self._record("upload", {"file_id": request.match_info["file_id"], "bytes": len(data)})
        with self._lock:
            f = self.files.get(request.match_info["file_id"])
            if f is None:
                return web.Response(status=404, text="no such upload")
            f.data, f.uploaded = data, True
        return web.Response(text="OK - " + str(len(data)))

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["key"].split("-", 1)[-1]
        auth = request.headers.get("Authorization", "")
        self._record("download", {"file_id": file_id, "authorized": auth == f"Bearer {BOT_TOKEN}"})
        with self._lock:
            f = self.files.get(file_id)
        if auth != f"Bearer {BOT_TOKEN}":  # Slack serves its sign-in page, not an error
            return web.Response(text="<!DOCTYPE html><html>Sign in to Slack</html>", content_type="text/html")
        if f is None:
            return web.Response(status=404, text="file not found")
        length = {} if f.chunked else {"Content-Length": str(len(f.data))}
        resp = web.StreamResponse(headers={"Content-Type": f.mimetype, **length})
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # a small send buffer, so `served` is close to what the bot read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        await resp.prepare(request)
        for i in range(0, len(f.data), 1 << 20):
            try:
                await resp.write(f.data[i : i + (1 << 20)])
            except (ConnectionResetError, RuntimeError):
                break  # the client stopped reading (a size cap): fine
            with self._lock:
                self.served[file_id] = self.served.get(file_id, 0) + len(f.data[i : i + (1 << 20)])
        return resp

    async def _respond(self, request: web.Request) -> web.Response:
        self._record("respond", {"rid": request.match_info["rid"], **(await request.json())})
        return web.Response(text="ok")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._lock:
            self._sockets.append(ws)
            self.connections += 1
        self._record("socket.connect", {"ticket": request.query.get("ticket")})
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self._sockets),
                    "debug_info": {"host": "fake"},
                    "connection_info": {"app_id": APP_ID},
                }
            )
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if "envelope_id" in data:
                        self._record("ack", data)
        finally:
            with self._lock:
                if ws in self._sockets:
                    self._sockets.remove(ws)
        return ws


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value
