"""A lightweight OpenAI-shaped backend for gateway integration tests.

It is not the replica simulator: it answers just enough of vLLM's API to
test what nginx does (spread, streaming, retries, error pass-through) and
lets a test control each answer. It runs in a thread on a loopback port.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Backend:
    """One fake replica. Mutate its attributes to change how it answers."""

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.status_override: int | None = None  # answer every /v1 POST with this
        self.chunks = 3
        self.stream_gate: threading.Event | None = None  # held after the first chunk
        self.streams_finished = 0
        self.served = 0
        self.last_body = b""  # the last POST body, as the gateway passed it on
        self.last_path = ""  # and the path it was sent to
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._json(200, {})
                elif self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})
                elif self.path == "/metrics":
                    data = (f'vllm:num_requests_running{{engine="0",model_name="m"}} 0\n'
                            f'backend_served_total {backend.served}\n').encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._json(404, {"error": {"message": "not found", "code": 404}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                backend.last_body = raw
                backend.last_path = self.path
                try:
                    body = json.loads(raw or b"{}")
                    if not isinstance(body, dict):
                        raise json.JSONDecodeError("not an object", "", 0)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self._json(400, {"error": {"message": "bad json", "type": "BadRequestError",
                                               "param": None, "code": 400}})
                    return
                if backend.status_override is not None:
                    code = backend.status_override
                    self._json(code, {"error": {"message": f"forced {code}", "code": code}})
                    return
                if body.get("model") != "m":
                    self._json(404, {"error": {"message": "The model does not exist.",
                                               "type": "NotFoundError", "param": "model",
                                               "code": 404}})
                    return
                with backend.lock:
                    backend.served += 1
                if body.get("stream"):
                    self._stream()
                else:
                    self._json(200, {"id": "x", "object": "chat.completion", "model": "m",
                                     "served_by": backend.name,
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant",
                                                              "content": "hi"}}]})

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(backend.chunks):
                    event = {"id": "x", "object": "chat.completion.chunk", "model": "m",
                             "choices": [{"index": 0, "delta": {"content": f"t{i} "},
                                          "finish_reason": None}]}
                    self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                    if i == 0 and backend.stream_gate is not None:
                        # Hold the rest until the test has seen the first
                        # chunk: if the gateway buffered, it never would.
                        backend.stream_gate.wait(timeout=5)
                    time.sleep(0.01)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
                with backend.lock:
                    backend.streams_finished += 1

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler
