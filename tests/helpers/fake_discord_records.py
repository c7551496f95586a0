"""What the fake Discord records, and the request storage keys its middleware and routes share."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PAYLOAD: web.RequestKey[Any] = web.RequestKey("payload", object)
FILES: web.RequestKey[list[Any]] = web.RequestKey("files", list)


@dataclass
class SentFile:
    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class Recorded:
    seq: int
    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: Any
    files: list[SentFile] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "rest"


@dataclass
class Dispatched:
    seq: int
    event: str
    data: Any

    @property
    def kind(self) -> str:
        return "gateway"


@dataclass
class Failure:
    method: str
    path: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


async def read_body(request: web.Request) -> tuple[Any, list[SentFile]]:
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        files = []
        reader = await request.multipart()
        async for part in reader:
            data = await part.read()  # type: ignore[union-attr]
            if part.name == "payload_json":  # type: ignore[union-attr]
                payload = json.loads(data)
            else:
                files.append(
                    SentFile(
                        part.name or "",
                        part.filename or "",  # type: ignore[union-attr]
                        part.headers.get("Content-Type", ""),
                        bytes(data),
                    )
                )
        return payload, files
    raw = await request.read()
    return (json.loads(raw) if raw else None), []
