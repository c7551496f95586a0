"""Downloading the files people attach (Discord's CDN, Slack's private URLs) within
`core.uploads`' limits.

The sizes the platform declared are checked before anything is fetched, each response's
Content-Length before its body, and the body is read chunk by chunk and dropped at the
first chunk past a limit, so a size field that understates a file costs no more than the
limit. Every refusal is `DownloadRefused`, a sentence for the person.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from bot.chat.service import Upload
from core.uploads import CHUNK_BYTES, UploadBudget, UploadTooLarge


class DownloadRefused(Exception):
    """A file we will not pass on; the message is for the person."""


@dataclass(frozen=True)
class Attached:
    """One file as the platform announced it."""

    name: str
    url: str
    size: int | None  # declared by the platform; may understate


@dataclass(frozen=True)
class Source:
    """Where the files come from: auth headers and what to say when one cannot be fetched."""

    headers: Mapping[str, str]
    unavailable: str  # "{name}": the server answered, but not with the file
    failed: str  # "{name}": the connection failed


async def download_all(
    session: aiohttp.ClientSession, files: Sequence[Attached], source: Source
) -> list[Upload]:
    """All files, or `DownloadRefused` for the first that cannot be had (nothing is kept)."""
    budget = UploadBudget()
    try:
        budget.check_declared([(f.name, f.size) for f in files])
        return [await _download(session, f, source, budget) for f in files]
    except UploadTooLarge as exc:
        raise DownloadRefused(str(exc)) from None


async def _download(
    session: aiohttp.ClientSession, file: Attached, source: Source, budget: UploadBudget
) -> Upload:
    try:
        async with session.get(file.url, headers=dict(source.headers)) as resp:
            # Without access Slack answers 200 with its sign-in page, so check the type too.
            if resp.status != 200 or resp.content_type == "text/html":
                raise DownloadRefused(source.unavailable.format(name=file.name))
            budget.check_declared([(file.name, resp.content_length)])
            data = await budget.read(file.name, resp.content.iter_chunked(CHUNK_BYTES))
    except aiohttp.ClientError as exc:
        raise DownloadRefused(source.failed.format(name=file.name)) from exc
    return Upload(file.name, data)
