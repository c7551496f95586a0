"""The real web app in a process of its own (uvicorn), so a test can measure that process,
and a raw HTTP client that streams request bodies it never holds whole.

`raw_post` writes the request itself over a socket: with a Content-Length or chunked, it
stops writing as soon as the server has answered (a server that refuses early is seen to
refuse early), and it reports how many body bytes went out before the answer.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from core.settings import Settings, load_settings
from tests.helpers.profile import settings_env

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


def app_from_env():  # type: ignore[no-untyped-def]
    """uvicorn's factory: the app `dreambot up` serves, with settings from DREAMBOT_*."""
    from bot.web.app import create_app

    return create_app(load_settings(_env_file=None))


@dataclass
class WebProcess:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def reset_peak(self) -> None:
        """Start the peak resident size (VmHWM) over from the current one."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def peak(self) -> int:
        """The most memory the server held since `reset_peak` (bytes), however briefly."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def web_process(settings: Settings) -> Iterator[WebProcess]:
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:app_from_env"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=settings_env(settings))
    server = WebProcess(proc, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the web server exited with {proc.returncode}")
            try:
                if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- multipart bodies made on the fly ---------------------------------------------------------


@dataclass
class Body:
    content_type: str
    length: int
    chunks: Iterable[bytes]


def multipart(fields: dict[str, str], files: list[tuple[str, int | bytes]]) -> Body:
    """A multipart/form-data body: text fields, then files (bytes, or a size: a JPEG start
    followed by zeros, made 1 MB at a time so the test never holds it)."""
    boundary = "dreambotTestBoundary7MA4YWxkTrZu0gW"
    head: list[bytes] = []
    for name, value in fields.items():
        head.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    parts: list[tuple[bytes, int | bytes]] = []
    for filename, content in files:
        part = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        parts.append((part, content))
    tail = f"--{boundary}--\r\n".encode()
    length = sum(map(len, head)) + len(tail)
    length += sum(len(p) + (c if isinstance(c, int) else len(c)) + 2 for p, c in parts)

    def chunks() -> Iterator[bytes]:
        yield b"".join(head)
        for part, content in parts:
            yield part
            if isinstance(content, bytes):
                yield content
            else:
                yield b"\xff\xd8\xff\xe0" + bytes(min(MB, content) - 4)
                for start in range(MB, content, MB):
                    yield bytes(min(MB, content - start))
            yield b"\r\n"
        yield tail

    return Body(f"multipart/form-data; boundary={boundary}", length, chunks())


@dataclass
class Answer:
    status: int
    body: bytes
    sent: int  # body bytes written before the answer came (or the server hung up)


def raw_post(port: int, path: str, body: Body, *, cookie: str = "", chunked: bool = False) -> Answer:
    """POST `body`, declared by Content-Length or sent chunked (no length: only counting
    while reading can stop it). Writing stops once the server answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Type: {body.content_type}"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {body.length}")
    if cookie:
        lines.append(f"Cookie: {cookie}")
    sent = 0
    with sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            for chunk in body.chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # answered (or closed) before the body was complete
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and hung up: its answer is waiting to be read
        return Answer(*_read_response(sock), sent=sent)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        if not got:
            raise ConnectionError(f"the server hung up without an answer: {data[:200]!r}")
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    while length is not None and len(rest) < length:
        got = sock.recv(65536)
        if not got:
            break
        rest += got
    return status, rest
