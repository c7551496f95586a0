"""A local server speaking OpenAI chat completions over real HTTP, replaying scripted replies.

The real `openai` client talks to it. Each request takes the next scripted `Reply`: a
text (in any of the formats Gemma is known to write tool calls in, see `gemma_call`),
native `tool_calls`, an HTTP error with headers (429 + Retry-After, 401, 402, 500), or a
stream that breaks with an error event. Streaming requests get SSE with `: keep-alive`
comment lines between chunks and a usage chunk at the end. Every request body and its
headers are recorded for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None  # [{"name": ..., "arguments": dict | str}]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    prompt_tokens: int = 120
    completion_tokens: int = 30
    cost: float | None = None
    stream_error_after: int | None = None  # chunks sent before an error event (streaming only)
    chunk_chars: int = 6


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])


def gemma_call(name: str, args: dict[str, Any], fmt: str) -> str:
    """One tool call written the way Gemma writes it in format `fmt`."""
    call = {"name": name, "arguments": args}
    py_args = ", ".join(f"{k}={v!r}" for k, v in args.items())
    forms = {
        "tool_code": f"```tool_code\n{json.dumps(call)}\n```",
        "tool_code_python": f"```tool_code\n{name}({py_args})\n```",
        "json_fence": f"```json\n{json.dumps(call)}\n```",
        "bare_json": json.dumps(call),
        "bare_parameters": json.dumps({"name": name, "parameters": args}),
        "bare_list": json.dumps([call]),
        "tool_calls_wrapper": json.dumps({"tool_calls": [call]}),
        "pythonic": f"[{name}({py_args})]",
        "prose_json": f"Sure! I'll do that now.\n{json.dumps(call)}\nHang on a moment.",
        "prose_fence": f"Okay, let me start that for you.\n\n```tool_code\n{json.dumps(call)}\n```",
    }
    return forms[fmt]


class FakeLLM:
    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- scripting -------------------------------------------------------------------------

    def add(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def say(self, text: str, **kw: Any) -> None:
        self.add(Reply(text=text, **kw))

    def call(self, name: str, args: dict[str, Any], fmt: str = "tool_code") -> None:
        self.add(Reply(text=gemma_call(name, args, fmt)))

    def native(self, name: str, args: dict[str, Any], text: str = "") -> None:
        self.add(Reply(text=text, tool_calls=[{"name": name, "arguments": args}]))

    def fail(
        self, status: int, headers: dict[str, str] | None = None, error: str = "scripted failure"
    ) -> None:
        self.add(Reply(status=status, headers=headers or {}, error=error))

    def next_reply(self) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        return Reply(status=400, error="fake LLM: no scripted reply left")


def _handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; a stream ends at close

        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with fake._lock:
                fake.requests.append(Recorded(body, {k.lower(): v for k, v in self.headers.items()}))
            if not self.path.endswith("/chat/completions"):
                return self._json(404, {"error": {"message": f"no route {self.path}"}})
            reply = fake.next_reply()
            if reply.status != 200:
                err = {"error": {"message": reply.error, "code": reply.status}}
                return self._json(reply.status, err, reply.headers)
            if body.get("stream"):
                return self._stream(body, reply)
            return self._json(200, _completion(body, reply))

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, body: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            base = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
            }

            def send(line: str) -> None:
                self.wfile.write(line.encode())
                self.wfile.flush()

            send(": keep-alive\n\n")
            text = reply.text
            pieces = [text[i : i + reply.chunk_chars] for i in range(0, len(text), reply.chunk_chars)]
            send(
                f"data: {json.dumps({**base, 'choices': [_delta({'role': 'assistant', 'content': ''})]})}\n\n"
            )
            for n, piece in enumerate(pieces):
                if reply.stream_error_after is not None and n == reply.stream_error_after:
                    send(
                        f"data: {json.dumps({'error': {'message': 'upstream overloaded', 'code': 502}})}\n\n"
                    )
                    return
                send(f"data: {json.dumps({**base, 'choices': [_delta({'content': piece})]})}\n\n")
                send(": keep-alive\n\n")
            for i, call in enumerate(reply.tool_calls or []):
                tc = {
                    "index": i,
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": _args(call)},
                }
                send(f"data: {json.dumps({**base, 'choices': [_delta({'tool_calls': [tc]})]})}\n\n")
            finish = "tool_calls" if reply.tool_calls else "stop"
            send(f"data: {json.dumps({**base, 'choices': [_delta({}, finish)]})}\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                send(f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(reply)})}\n\n")
            send("data: [DONE]\n\n")

    return Handler


def _args(call: dict[str, Any]) -> str:
    args = call["arguments"]
    return args if isinstance(args, str) else json.dumps(args)


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish}


def _usage(reply: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    if reply.cost is not None:
        usage["cost"] = reply.cost
    return usage


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": c["name"], "arguments": _args(c)}}
            for i, c in enumerate(reply.tool_calls)
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}
        ],
        "usage": _usage(reply),
    }
