"""The REST endpoints of the fake Discord (see fake_discord.py for the world they act on)."""

from __future__ import annotations

import json
import re
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.helpers import fake_discord_payloads as P
from tests.helpers.fake_discord_records import FILES, PAYLOAD, Recorded

if TYPE_CHECKING:
    from tests.helpers.fake_discord import FakeDiscord
    from tests.helpers.fake_discord_records import SentFile

EPHEMERAL, LOADING = 64, 128


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": discord.py parses a body as JSON only for that header.
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status=status)


def _public(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if not k.startswith("_")}


def add_routes(app: web.Application, fake: FakeDiscord) -> None:
    api = "/api/v10"

    def payload(request: web.Request) -> dict[str, Any]:
        return request[PAYLOAD] or {}

    def attachments(request: web.Request, existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """New files (files[n] parts) and kept ones, as the `attachments` list says."""
        files: list[SentFile] = request[FILES]
        uploaded = {int(m.group(1)): f for f in files if (m := re.fullmatch(r"files\[(\d+)\]", f.field))}
        entries = payload(request).get("attachments")
        if entries is None:
            if not files:
                return existing
            entries = [{"id": n} for n in uploaded]
        out = []
        for entry in entries:
            ref = int(entry["id"])
            if ref in uploaded and ref < 1000:  # an index into this request's files
                f = uploaded[ref]
                out.append(fake.upload(entry.get("filename") or f.filename, f.data, f.content_type or None))
            else:
                out += [a for a in existing if a["id"] == str(ref)]
        return out

    def update(
        msg: dict[str, Any], request: web.Request, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = payload(request) if body is None else body
        if "content" in body:
            msg["content"] = body["content"] or ""
        if "components" in body:
            msg["components"] = body["components"] or []
        if "embeds" in body:
            msg["embeds"] = body["embeds"] or []
        msg["attachments"] = attachments(request, msg["attachments"])
        msg["flags"] = msg.get("flags", 0) & ~LOADING
        msg["edited_timestamp"] = P.now_iso()
        return msg

    def create(channel_id: str, request: web.Request, **extra: Any) -> dict[str, Any]:
        body = payload(request)
        msg = fake.new_message(
            channel_id,
            fake.bot,
            body.get("content") or "",
            flags=body.get("flags", 0),
            components=body.get("components") or [],
            embeds=body.get("embeds") or [],
            **extra,
        )
        msg["attachments"] = attachments(request, [])
        return msg

    # -- identity and gateway ----------------------------------------------------------------

    async def me(_: web.Request) -> web.Response:
        return _json(fake.bot)

    async def application(_: web.Request) -> web.Response:
        return _json(
            {
                "id": str(fake.app_id),
                "name": "dreambot",
                "icon": None,
                "description": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": P.user(1, "owner"),
                "summary": "",
                "verify_key": "0" * 64,
                "team": None,
                "flags": 0,
                "bot": fake.bot,
            }
        )

    async def gateway(_: web.Request) -> web.Response:
        return _json(
            {
                "url": fake.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def put_commands(request: web.Request) -> web.Response:
        fake.commands = [
            {
                **c,
                "id": str(fake.ids()),
                "application_id": str(fake.app_id),
                "version": "1",
                "default_member_permissions": None,
                "type": c.get("type", 1),
            }
            for c in request[PAYLOAD]
        ]
        return _json(fake.commands)

    async def get_commands(_: web.Request) -> web.Response:
        return _json(fake.commands)

    # -- interactions and their webhook ---------------------------------------------------------

    async def callback(request: web.Request) -> web.StreamResponse:
        inter = fake.interactions.get(request.match_info["token"])
        if inter is None or inter["id"] != request.match_info["iid"]:
            return _error(404, 10062, "Unknown interaction")
        if inter["acked"]:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        inter["acked"] = True
        body = payload(request)
        kind, data = body["type"], body.get("data") or {}
        msg = None
        if kind in (4, 5):  # a message now, or "thinking…" now and the message later
            flags = data.get("flags", 0) | (LOADING if kind == 5 else 0)
            msg = fake.new_message(
                inter["channel"],
                fake.bot,
                data.get("content") or "",
                flags=flags,
                components=data.get("components") or [],
                webhook_id=str(fake.app_id),
                application_id=str(fake.app_id),
            )
            msg["attachments"] = attachments(request, [])
            msg["_ephemeral"] = bool(flags & EPHEMERAL)
            inter["original"] = msg["id"]
        elif kind == 9:  # a form: the person fills it in later (FakeDiscord.submit_form)
            inter["modal"] = data
        elif kind == 7 and inter["original"]:  # UPDATE_MESSAGE: the new message is in `data`
            msg = update(fake.messages[inter["original"]], request, data)
        if request.query.get("with_response") in ("1", "true", "True"):
            resource: dict[str, Any] = {"type": kind}
            if msg is not None:
                resource["message"] = _public(msg)
            return _json({"interaction": {"id": inter["id"], "type": 2}, "resource": resource})
        return web.Response(status=204)

    def interaction_for(request: web.Request) -> dict[str, Any] | None:
        token = request.match_info["token"]
        if request.match_info["app"] != str(fake.app_id) or token in fake.expired_tokens:
            return None
        return fake.interactions.get(token)

    async def followup(request: web.Request) -> web.StreamResponse:
        inter = interaction_for(request)
        if inter is None:
            return _error(401, 50027, "Invalid Webhook Token")
        msg = create(
            request.query.get("thread_id") or inter["channel"],
            request,
            webhook_id=str(fake.app_id),
            application_id=str(fake.app_id),
        )
        msg["_ephemeral"] = bool(msg["flags"] & EPHEMERAL)
        msg["_token"] = request.match_info["token"]  # which interaction it followed up
        wait = request.query.get("wait") in ("1", "true", "True")
        return _json(_public(msg)) if wait else web.Response(status=204)

    async def webhook_message(request: web.Request) -> web.StreamResponse:
        inter = interaction_for(request)
        if inter is None:
            return _error(401, 50027, "Invalid Webhook Token")
        mid = request.match_info["mid"]
        mid = inter["original"] if mid == "@original" else mid
        msg = fake.messages.get(mid or "")
        if msg is None or msg.get("_deleted"):
            return _error(404, 10008, "Unknown Message")
        if request.method == "DELETE":
            msg["_deleted"] = True
            return web.Response(status=204)
        if request.method == "PATCH":
            update(msg, request)
        return _json(_public(msg))

    # -- channels, messages, threads ----------------------------------------------------------------

    async def post_message(request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if cid not in fake.channels:
            return _error(404, 10003, "Unknown Channel")
        body = payload(request)
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            for old in reversed(fake.channel_messages(cid)):
                if old.get("nonce") == nonce and old["author"]["id"] == fake.bot["id"]:
                    return _json(_public(old))
        msg = create(cid, request, nonce=nonce)
        fake.dispatch("MESSAGE_CREATE", _public(msg))
        return _json(_public(msg))

    async def list_messages(request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if cid not in fake.channels:
            return _error(404, 10003, "Unknown Channel")
        limit = int(request.query.get("limit", 50))
        return _json([_public(m) for m in reversed(fake.channel_messages(cid))][:limit])

    async def one_message(request: web.Request) -> web.StreamResponse:
        msg = fake.messages.get(request.match_info["mid"])
        if msg is None or msg.get("_deleted") or msg["channel_id"] != request.match_info["cid"]:
            return _error(404, 10008, "Unknown Message")
        if request.method == "DELETE":
            msg["_deleted"] = True
            return web.Response(status=204)
        if request.method == "PATCH":
            if msg["author"]["id"] != fake.bot["id"]:
                return _error(403, 50005, "Cannot edit a message authored by another user")
            update(msg, request)
        return _json(_public(msg))

    async def new_thread(request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if fake.channels.get(cid, {}).get("type") != 0:
            return _error(400, 50024, "Cannot execute action on this channel type")
        body = payload(request)
        thread = fake.add_thread(cid, body.get("name", "thread"), thread_id=request.match_info.get("mid"))
        return _json(thread, status=201)

    async def channel(request: web.Request) -> web.Response:
        data = fake.channels.get(request.match_info["cid"])
        if data is None:
            return _error(404, 10003, "Unknown Channel")
        if request.method == "DELETE":
            del fake.channels[data["id"]]
            if data["type"] in (11, 12):
                fake.dispatch("THREAD_DELETE", {k: data[k] for k in ("id", "guild_id", "parent_id", "type")})
        return _json(data)

    async def typing(_: web.Request) -> web.Response:
        return web.Response(status=204)

    async def cdn(request: web.Request) -> web.StreamResponse:
        """Served in 1 MB chunks, without a Content-Length (so only counting while reading can
        stop a big one); `fake.served` counts what went out."""
        fake.log.append(Recorded(fake.next_seq(), "GET", request.path, {}, None))
        aid = request.match_info["aid"]
        data = fake.blobs.get(aid)
        if data is None:
            return web.Response(status=404)
        resp = web.StreamResponse()
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # a small send buffer, so `served` is close to what the bot read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        await resp.prepare(request)
        for start in range(0, len(data), 1 << 20):
            try:
                await resp.write(data[start : start + (1 << 20)])
            except (ConnectionResetError, RuntimeError):
                break  # the client stopped reading: a size cap
            fake.served[aid] = fake.served.get(aid, 0) + len(data[start : start + (1 << 20)])
        return resp

    r = app.router
    r.add_get(api + "/users/@me", me)
    r.add_get(api + "/oauth2/applications/@me", application)
    r.add_get(api + "/gateway", gateway)
    r.add_get(api + "/gateway/bot", gateway)
    r.add_put(api + "/applications/{app}/commands", put_commands)
    r.add_get(api + "/applications/{app}/commands", get_commands)
    r.add_post(api + "/interactions/{iid}/{token}/callback", callback)
    r.add_post(api + "/webhooks/{app}/{token}", followup)
    r.add_route("*", api + "/webhooks/{app}/{token}/messages/{mid}", webhook_message)
    r.add_post(api + "/channels/{cid}/messages", post_message)
    r.add_get(api + "/channels/{cid}/messages", list_messages)
    r.add_route("*", api + "/channels/{cid}/messages/{mid}", one_message)
    r.add_post(api + "/channels/{cid}/threads", new_thread)
    r.add_post(api + "/channels/{cid}/messages/{mid}/threads", new_thread)
    r.add_post(api + "/channels/{cid}/typing", typing)
    r.add_route("*", api + "/channels/{cid}", channel)
    r.add_get("/attachments/{aid}/{filename}", cdn)
