"""Upload limits, enforced while the bytes arrive: every path that takes files from a person
(the playground's forms, Discord and Slack attachments) reads them through `UploadBudget`.

A file is never held whole beyond its limit: a declared size over the limit is refused
before anything is read, and reading stops at the first chunk past the limit (a size field
can understate). All files of one message or form together are bounded as well, so ten
files just under the per-file limit cannot add up to a memory spike. Refusals are
`UploadTooLarge`, one sentence a person can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence

from core.errors import UserFacingError
from core.photos import MAX_BYTES, check_pixel_count

MAX_FILE_BYTES = MAX_BYTES  # one file (the photo check's own limit)
MAX_TOTAL_BYTES = 100 * 1024 * 1024  # all files of one message or form together
CHUNK_BYTES = 1 << 16


class UploadTooLarge(UserFacingError):
    """A file, or the files together, over the limit; nothing of it was kept."""


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def file_too_large(name: str, size: int | None, limit: int = MAX_FILE_BYTES) -> UploadTooLarge:
    """The refusal for one file; `size` None: we stopped reading, so only 'more than' is known."""
    what = f"more than {limit // 2**20} MB" if size is None else _mb(size)
    return UploadTooLarge(f"“{name}” is {what}; please send photos under {limit // 2**20} MB.")


def total_too_large(size: int | None, limit: int = MAX_TOTAL_BYTES) -> UploadTooLarge:
    what = f"more than {limit // 2**20} MB" if size is None else _mb(size)
    return UploadTooLarge(
        f"These files are {what} together; please send at most {limit // 2**20} MB at once "
        "(fewer or smaller photos)."
    )


class UploadBudget:
    """The files of one message or form, counted as they are read.

    `check_declared` refuses on a size the sender declared (before any download);
    `read` takes the bytes chunk by chunk and stops at the first one past a limit."""

    def __init__(self, per_file: int = MAX_FILE_BYTES, total: int = MAX_TOTAL_BYTES) -> None:
        self.per_file = per_file
        self.total = total
        self.used = 0

    def check_declared(self, files: Sequence[tuple[str, int | None]]) -> None:
        """Refuse on declared sizes alone: one file over its limit, or all of them together."""
        for name, size in files:
            if size is not None and size > self.per_file:
                raise file_too_large(name, size, self.per_file)
        declared = self.used + sum(size or 0 for _, size in files)
        if declared > self.total:
            raise total_too_large(declared, self.total)

    async def read(self, name: str, chunks: AsyncIterable[bytes]) -> bytes:
        """The whole file, or `UploadTooLarge` as soon as it (or the message) passes a limit."""
        parts: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > self.per_file:
                raise file_too_large(name, None, self.per_file)
            if self.used + size > self.total:
                raise total_too_large(None, self.total)
            parts.append(chunk)
        self.used += size
        return b"".join(parts)


def check_uploads(files: Sequence[tuple[str, bytes]]) -> None:
    """The same limits for files already in memory (a caller that did not stream them),
    plus the pixel count from each image's header, so nothing later decodes a bomb."""
    budget = UploadBudget()
    budget.check_declared([(name, len(data)) for name, data in files])
    for name, data in files:
        check_pixel_count(data, name)
