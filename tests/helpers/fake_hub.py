"""A local model hub over real HTTP, serving a model folder the way huggingface_hub expects.

Point `HF_ENDPOINT` at `FakeHub.url` (and `HF_HUB_OFFLINE=0`) and the real huggingface_hub
downloads from it. It answers what `snapshot_download` asks, with the headers its
file_download code reads:

* `GET /api/models/<repo>/revision/<rev>`: the model's info, `sha` = the commit;
* `GET /api/models/<repo>/tree/<rev>?recursive=…`: every file with its size, git blob id
  and, for weights, the LFS sha256;
* `HEAD|GET /<repo>/resolve/<rev>/<path>`: `X-Repo-Commit`, `ETag` (the LFS sha256 for
  weights, else the git blob id), `Content-Length`, and the bytes — paced at
  `bytes_per_second` so a test can watch a download happen.

A repository listed in `gated` answers 401 `X-Error-Code: GatedRepo`; any other unknown
one 404 `RepoNotFound`. Every request is recorded (method, path) for assertions.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes

    @property
    def blob_id(self) -> str:  # git's blob hash
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


class FakeHub:
    def __init__(
        self, repo_id: str, folder: Path, *, bytes_per_second: int = 0, gated: tuple[str, ...] = ()
    ) -> None:
        self.repo_id = repo_id
        self.files = {
            p.relative_to(folder).as_posix(): HubFile(p.relative_to(folder).as_posix(), p.read_bytes())
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        self.commit = hashlib.sha1(
            repo_id.encode() + b"".join(f.data for f in self.files.values())
        ).hexdigest()
        self.bytes_per_second = bytes_per_second
        self.gated = gated
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def total_bytes(self) -> int:
        return sum(len(f.data) for f in self.files.values())

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self) -> list[str]:
        """Paths whose bytes were sent (GET of a file)."""
        with self._lock:
            return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def env(self) -> dict[str, str]:
        return {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}

    # -- answers ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "_id": "fake",
            "id": self.repo_id,
            "modelId": self.repo_id,
            "sha": self.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": ["diffusers"],
            "siblings": [{"rfilename": p} for p in self.files],
        }

    def tree(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        folders = sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p})
        for folder in folders:
            entries.append(
                {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "path": folder}
            )
        for f in self.files.values():
            entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": len(f.data), "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
            entries.append(entry)
        return entries


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            with hub._lock:
                hub.requests.append((self.command, path))
            api = path.startswith("/api/models/")
            rest = path.removeprefix("/api/models/") if api else path.lstrip("/")
            repo = "/".join(rest.split("/")[:2])
            if repo != hub.repo_id:
                code = "GatedRepo" if repo in hub.gated else "RepoNotFound"
                return self._send(
                    401 if repo in hub.gated else 404, b'{"error": "no"}', {"X-Error-Code": code}
                )
            tail = rest.split("/")[2:]
            if api and tail[:1] == ["revision"]:
                return self._json(hub.info(), body)
            if api and tail[:1] == ["tree"]:
                return self._json(hub.tree(), body)
            if not api and tail[:1] == ["resolve"] and len(tail) >= 3:
                file = hub.files.get("/".join(tail[2:]))
                if file is None:
                    return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                headers = {"X-Repo-Commit": hub.commit, "ETag": f'"{file.etag}"'}
                return self._send(200, file.data, headers, body=body, paced=True)
            self._send(404, b"{}", {})

        def _json(self, payload: Any, body: bool) -> None:
            self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, body=body)

        def _send(
            self, status: int, data: bytes, headers: dict[str, str], *, body: bool = True, paced: bool = False
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if not body:
                return
            step = 16 * 1024
            for i in range(0, len(data), step):
                self.wfile.write(data[i : i + step])
                if paced and hub.bytes_per_second:
                    self.wfile.flush()
                    time.sleep(step / hub.bytes_per_second)

    return Handler
