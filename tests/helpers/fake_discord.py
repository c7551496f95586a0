"""A local Discord: the REST API under /api/v10 and a gateway websocket, for the REAL discord.py.

It runs an aiohttp server in its own thread (so a bot in the test's event loop or in a
subprocess can use it), keeps a small world (one guild, channels, threads, DMs, messages,
interactions) and records every REST request and every gateway event it sends, in one
numbered log, so a test asserts exactly what Discord received and in which order.

Behaviour follows Discord's documentation where the bot depends on it: an interaction can
be acknowledged once (then 400, code 40060); follow-ups go through webhooks/{app}/{token};
a message posted with `nonce` + `enforce_nonce` that repeats a recent nonce returns the
first message instead of creating another; messages carry their nonce when listed.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from tests.helpers import fake_discord_payloads as P
from tests.helpers.fake_discord_records import (
    FILES,
    PAYLOAD,
    Dispatched,
    Failure,
    Recorded,
    read_body,
)
from tests.helpers.fake_discord_routes import _json, add_routes

API = "/api/v10"


class FakeDiscord:
    def __init__(self, *, refuse_message_content: bool = False) -> None:
        self.ids = P.Snowflakes()
        self.app_id, self.guild_id = self.ids(), self.ids()
        self.bot = P.user(self.app_id, "dreambot", bot=True)  # bot user id == application id
        self.refuse_message_content = refuse_message_content
        self.log: list[Recorded | Dispatched] = []
        self.identifies: list[dict[str, Any]] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}  # id -> message (with "_ephemeral")
        self.blobs: dict[str, bytes] = {}  # attachment id -> bytes served at its url
        self.served: dict[str, int] = {}  # attachment id -> bytes the CDN wrote out
        self.interactions: dict[str, dict[str, Any]] = {}  # token -> {"id", "channel", "acked", "original"}
        self.commands: list[dict[str, Any]] = []
        self.failures: list[Failure] = []
        self.expired_tokens: set[str] = set()
        self._seq = 0
        self._lock = threading.Lock()
        self._sockets: list[web.WebSocketResponse] = []
        self._ws_seq: dict[int, int] = {}
        self._outgoing: dict[int, asyncio.Queue[dict[str, Any]]] = {}  # per socket, in order
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.channel_id = self.add_text_channel("general")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeDiscord:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            for ws in list(self._sockets):
                await ws.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=200 * 1024 * 1024, middlewares=[self._record])
        app.router.add_get("/gateway", self._gateway)
        add_routes(app, self)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self._loop.run_forever()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base + API

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- the log -------------------------------------------------------------------------------

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def rest(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """Recorded REST requests, filtered by method and a regex on the path."""
        return [
            r
            for r in list(self.log)
            if isinstance(r, Recorded)
            and (method is None or r.method == method)
            and (path is None or re.search(path, r.path))
        ]

    def dispatched(self, event: str | None = None) -> list[Dispatched]:
        return [d for d in list(self.log) if isinstance(d, Dispatched) and event in (None, d.event)]

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next matching request gets this error (429s need a Retry-After and retry_after)."""
        self.failures.append(
            Failure(method, re.compile(path), status, body or {"message": "fail", "code": 0}, headers or {})
        )

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(API):
            return await handler(request)
        path = request.path[len(API) :]
        payload, files = await read_body(request)
        request[PAYLOAD], request[FILES] = payload, files
        self.log.append(
            Recorded(
                self.next_seq(),
                request.method,
                path,
                dict(request.query),
                payload,
                files,
                {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            )
        )
        if request.headers.get("Authorization") not in (f"Bot {TOKEN}", None):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        for failure in list(self.failures):
            if failure.method == request.method and failure.path.search(path):
                self.failures.remove(failure)
                return _json(failure.body, failure.status, failure.headers)
        return await handler(request)

    # -- the world ------------------------------------------------------------------------------

    def add_text_channel(self, name: str) -> str:
        cid = str(self.ids())
        self.channels[cid] = P.text_channel(int(cid), self.guild_id, name)
        return cid

    def add_dm(self, who: dict[str, Any]) -> str:
        cid = str(self.ids())
        self.channels[cid] = P.dm_channel(int(cid), who)
        return cid

    def add_thread(
        self, parent_id: str, name: str, owner_id: str | None = None, thread_id: str | None = None
    ) -> dict[str, Any]:
        tid = thread_id or str(self.ids())
        data = P.thread(int(tid), self.guild_id, int(parent_id), int(owner_id or self.app_id), name)
        self.channels[tid] = data
        self.dispatch("THREAD_CREATE", {**data, "newly_created": True})
        return data

    def new_user(self, name: str) -> dict[str, Any]:
        return P.user(self.ids(), name)

    def upload(
        self, filename: str, data: bytes, content_type: str | None = None, declared_size: int | None = None
    ) -> dict[str, Any]:
        """An attachment a person sent; its bytes are served at its url (the CDN)."""
        att_id = str(self.ids())
        self.blobs[att_id] = data
        url = f"{self.base}/attachments/{att_id}/{filename}"
        return P.attachment(int(att_id), filename, declared_size or len(data), url, content_type)

    def channel_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """Visible messages of a channel, oldest first."""
        return [
            m
            for m in list(self.messages.values())
            if m["channel_id"] == channel_id and not m.get("_ephemeral") and not m.get("_deleted")
        ]

    def new_message(
        self, channel_id: str, author: dict[str, Any], content: str, **extra: Any
    ) -> dict[str, Any]:
        msg = P.message(self.ids(), self.channels[channel_id], author, content, **extra)
        self.messages[msg["id"]] = msg
        return msg

    # -- gateway events (callable from any thread) --------------------------------------------

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.log.append(Dispatched(self.next_seq(), event, data))
        if threading.current_thread() is self._thread:
            self._send_all(event, data)
        else:
            self._loop.call_soon_threadsafe(self._send_all, event, data)

    def _send_all(self, event: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            self._ws_seq[id(ws)] = seq = self._ws_seq.get(id(ws), 0) + 1
            self._outgoing[id(ws)].put_nowait({"op": 0, "t": event, "s": seq, "d": data})

    def slash(
        self, name: str, options: dict[str, Any], who: dict[str, Any], channel_id: str | None = None
    ) -> dict[str, Any]:
        """Send a slash command; attachment options are payloads from `upload()`."""
        channel = self.channels[channel_id or self.channel_id]
        opts, resolved = [], {}
        for key, value in options.items():
            if isinstance(value, dict):  # an attachment
                resolved[value["id"]] = value
                opts.append({"name": key, "type": 11, "value": value["id"]})
            else:
                kind = 5 if isinstance(value, bool) else 4 if isinstance(value, int) else 3
                opts.append({"name": key, "type": kind, "value": value})
        command = next((c for c in self.commands if c["name"] == name), {"id": "0"})
        data: dict[str, Any] = {"id": command["id"], "name": name, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = {"attachments": resolved}
        return self.interact(2, channel, who, data)

    def press(self, message: dict[str, Any], custom_id: str, who: dict[str, Any]) -> dict[str, Any]:
        channel = self.channels[message["channel_id"]]
        data = {"custom_id": custom_id, "component_type": 2}
        return self.interact(3, channel, who, data, message=message)

    def submit_form(
        self, opened: dict[str, Any], who: dict[str, Any], files: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Submit the form (modal) the bot answered `opened` with: text inputs keep their
        pre-filled values, file uploads get `files` (payloads from `upload()`)."""
        modal = self.interactions[opened["token"]]["modal"]
        rows = []
        for label in modal["components"]:
            comp = label["component"]
            if comp["type"] == 19:
                filled = {"type": 19, "custom_id": comp["custom_id"], "values": [f["id"] for f in files]}
            else:
                filled = {
                    "type": comp["type"],
                    "custom_id": comp["custom_id"],
                    "value": comp.get("value", ""),
                }
            rows.append({"type": label["type"], "component": filled})
        data = {
            "custom_id": modal["custom_id"],
            "components": rows,
            "resolved": {"attachments": {f["id"]: f for f in files}},
        }
        return self.interact(5, opened["channel"], who, data)

    def interact(
        self, itype: int, channel: dict[str, Any], who: dict[str, Any], data: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        token = "itok-" + uuid.uuid4().hex
        payload = P.interaction(self.ids(), self.app_id, token, itype, channel, who, data, **extra)
        self.interactions[token] = {
            "id": payload["id"],
            "channel": channel["id"],
            "acked": False,
            "original": extra.get("message", {}).get("id"),
        }
        self.dispatch("INTERACTION_CREATE", payload)
        return payload

    def say(
        self,
        channel_id: str,
        who: dict[str, Any],
        content: str,
        *,
        mention: bool = False,
        attachments: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A person writes a message (MESSAGE_CREATE)."""
        text = f"<@{self.app_id}> {content}" if mention else content
        msg = self.new_message(
            channel_id, who, text, attachments=attachments or [], mentions=[self.bot] if mention else []
        )
        if self.channels[channel_id].get("guild_id"):
            msg["member"] = {k: v for k, v in P.member(who).items() if k != "user"}
        self.dispatch("MESSAGE_CREATE", msg)
        return msg

    # -- the gateway socket ----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        outgoing = self._outgoing[id(ws)] = asyncio.Queue()
        writer = asyncio.create_task(self._write(ws, outgoing))
        outgoing.put_nowait({"op": 10, "d": {"heartbeat_interval": 41250}})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["op"] == 1:
                outgoing.put_nowait({"op": 11})
            elif frame["op"] == 2:
                self.identifies.append(frame["d"])
                if self.refuse_message_content and frame["d"]["intents"] & P.MESSAGE_CONTENT_INTENT:
                    await asyncio.sleep(0)  # let HELLO go out first
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                self._sockets.append(ws)
                self._send_all(
                    "READY",
                    {
                        "v": 10,
                        "user": self.bot,
                        "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                        "session_id": uuid.uuid4().hex,
                        "resume_gateway_url": self.gateway_url,
                        "application": {"id": str(self.app_id), "flags": 0},
                        "private_channels": [],
                        "relationships": [],
                        "shard": [0, 1],
                    },
                )
                self._send_all("GUILD_CREATE", self._guild())
            elif frame["op"] == 6:  # resume: we keep no sessions; ask for a fresh identify
                outgoing.put_nowait({"op": 9, "d": False})
        if ws in self._sockets:
            self._sockets.remove(ws)
        writer.cancel()
        return ws

    @staticmethod
    async def _write(ws: web.WebSocketResponse, outgoing: asyncio.Queue[dict[str, Any]]) -> None:
        while not ws.closed:
            await ws.send_str(json.dumps(await outgoing.get()))

    def _guild(self) -> dict[str, Any]:
        text = [c for c in self.channels.values() if c["type"] == 0]
        threads = [c for c in self.channels.values() if c["type"] in (11, 12)]
        return P.guild(self.guild_id, self.bot, text, threads)


TOKEN = "fake-bot-token"
