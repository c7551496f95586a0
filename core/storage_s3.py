"""Storage in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, Ceph, …) via boto3.

Same keys and the same promises as `LocalStorage`:

* **Atomic for readers.** S3 publishes an object only when its PUT (or the
  CompleteMultipartUpload of a multipart upload) succeeds; until then readers see the old
  object or none, never a part. So there is no temporary key and no copy (a copy would
  double the traffic and, above 5 GB, need a multipart copy of its own). An upload that
  fails is aborted by boto3's transfer manager; one whose process dies leaves an
  *incomplete multipart upload*, invisible to readers and removed by the bucket's
  `AbortIncompleteMultipartUpload` lifecycle rule (docs/deploy.md).
* **Checksums verified, both ways.** The data is first spooled (memory, then a temp file
  for big blobs) while its sha256 is computed, so the digest can travel with the upload:
  S3 verifies every request body (`x-amz-checksum-sha256`, per part for multipart), and
  the whole-file digest is kept as object metadata. `open()` recomputes it while the
  caller reads and raises `ChecksumMismatch` at the end of a damaged object.
* **Multipart** above `multipart_threshold` bytes, in `part_size` parts (S3's minimum
  part is 5 MiB), with boto3's managed transfer (parallel parts, retries, abort).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from core.errors import DreambotError, NotFound
from core.storage_api import CHUNK, ChecksumMismatch, Storage, chunks, validate_key

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["ChecksumMismatch", "S3Storage", "parse_s3_url", "s3_storage_from_settings"]
MiB = 1024 * 1024
META_SHA256 = "sha256"  # stored as x-amz-meta-sha256
SPOOL_IN_MEMORY = 8 * MiB


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _missing(exc: Exception) -> bool:
    return _code(exc) in {"404", "NoSuchKey", "NotFound"}


class S3Storage(Storage):
    """Keys live under `prefix` in `bucket`; the bucket must exist (deploy.md says how)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        page_size: int = 1000,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.page_size = page_size
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "adaptive"}),
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=max(part_size, 5 * MiB)
        )

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _no_bucket(self, exc: Exception) -> Exception:
        """A missing bucket is a configuration error, never an empty store."""
        if _code(exc) == "NoSuchBucket":
            return DreambotError(
                f"the S3 bucket {self.bucket!r} does not exist at this endpoint: create it, or fix "
                "DREAMBOT_STORAGE_URL / DREAMBOT_S3_ENDPOINT_URL (docs/deploy.md)"
            )
        return exc

    def put(self, key: str, data: bytes | BinaryIO) -> str:
        full = self._key(key)
        digest = hashlib.sha256()
        # Spool first: the whole-file digest must be known before the upload starts (it is
        # metadata), and a reader that fails half way must not start an upload at all.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            for chunk in chunks(data):
                digest.update(chunk)
                spool.write(chunk)
            size = spool.tell()
            spool.seek(0)
            hexdigest = digest.hexdigest()
            extra: dict[str, Any] = {"Metadata": {META_SHA256: hexdigest}, "ChecksumAlgorithm": "SHA256"}
            try:
                self._upload(spool, full, size, extra, digest.digest())
            except self.client.exceptions.ClientError as exc:
                raise self._no_bucket(exc) from exc
        return hexdigest

    def _upload(self, spool: Any, full: str, size: int, extra: dict[str, Any], digest: bytes) -> None:
        if size < self.transfer.multipart_threshold:
            # One PUT: S3 checks the body against the digest we computed ourselves.
            self.client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=spool.read(),
                Metadata=extra["Metadata"],
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
        else:
            # Multipart: botocore sends each part's sha256 and S3 verifies each part.
            self.client.upload_fileobj(spool, self.bucket, full, ExtraArgs=extra, Config=self.transfer)

    def open(self, key: str) -> BinaryIO:
        full = self._key(key)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=full)
        except self.client.exceptions.ClientError as exc:
            if _missing(exc):
                raise NotFound(f"nothing stored under {key!r}") from None
            raise self._no_bucket(exc) from exc
        expected = (obj.get("Metadata") or {}).get(META_SHA256)
        return io.BufferedReader(_VerifyingReader(obj["Body"], expected, key), buffer_size=CHUNK)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    def delete(self, key: str) -> bool:
        # S3 deletes are idempotent and do not say whether the key was there: ask first.
        if not self.exists(key):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        # S3 lists keys in UTF-8 byte order, which is Python's str order: already sorted.
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :]
        except self.client.exceptions.ClientError as exc:
            raise self._no_bucket(exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        """Batch delete (1000 keys a request) instead of one request per key."""
        count, batch = 0, []
        for key in [*self.list(prefix)]:
            batch.append({"Key": self.prefix + key})
            if len(batch) == 1000:
                count += self._delete_batch(batch)
                batch = []
        if batch:
            count += self._delete_batch(batch)
        return count

    def _delete_batch(self, batch: Sequence[dict[str, str]]) -> int:
        reply = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = reply.get("Errors") or []
        if errors:
            raise DreambotError(f"S3 refused to delete {len(errors)} keys: {errors[0].get('Message')}")
        return len(batch)


class _VerifyingReader(io.RawIOBase):
    """Streams an S3 body and checks its sha256 when the end is reached."""

    def __init__(self, body: Any, expected: str | None, key: str) -> None:
        self.body, self.expected, self.key = body, expected, key
        self.digest = hashlib.sha256()
        self.checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.body.read(len(buffer))
        if not data:
            self._verify()
            return 0
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def _verify(self) -> None:
        if self.checked or self.expected is None:  # written by another tool: nothing to check
            return
        self.checked = True
        if self.digest.hexdigest() != self.expected:
            raise ChecksumMismatch(
                f"storage object {self.key!r} is damaged: its sha256 is {self.digest.hexdigest()}, "
                f"expected {self.expected}"
            )

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _client(settings: Settings) -> Any:
    """One boto3 client per process and endpoint: clients are thread-safe and slow to
    build, but their connection pools must not cross a fork (hence the pid in the key)."""
    import boto3
    from botocore.config import Config

    key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    ident = (
        os.getpid(),
        settings.s3_endpoint_url,
        settings.s3_region,
        key_id.get_secret_value() if key_id else None,
        secret.get_secret_value() if secret else None,
    )
    with _clients_lock:
        if ident not in _clients:
            _clients[ident] = boto3.client(
                "s3",
                endpoint_url=ident[1],
                region_name=ident[2],
                aws_access_key_id=ident[3],
                aws_secret_access_key=ident[4],
                # Adaptive retries ride out throttling (R2 and MinIO answer 503 SlowDown).
                config=Config(retries={"max_attempts": 5, "mode": "adaptive"}),
            )
        return _clients[ident]


def s3_storage_from_settings(settings: Settings) -> S3Storage:
    bucket, prefix = parse_s3_url(settings.resolved_storage_url)
    return S3Storage(bucket, prefix, client=_client(settings))
