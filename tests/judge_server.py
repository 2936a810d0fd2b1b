"""A local OpenAI-compatible chat-completions server for the judge tests: real HTTP on 127.0.0.1.

It answers ``POST .../chat/completions`` with a deterministic score (``default_answer``); on command it fails
with given HTTP statuses (``fail_next``), answers late (``delay_next``, for timeouts) or returns given answers
(``answer_next``, for malformed ones), or answers every request with a non-JSON page (``non_json``, a proxy or
a wrong base_url). With ``expected_key`` it rejects any other key with a 401 whose message
quotes the key it got (as real providers partly do). It records every request body and Authorization header.
It is bounded: it stops itself after ``lifetime_s`` seconds or ``max_requests`` requests, whichever first.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], str]


def default_answer(body: dict[str, Any]) -> str:
    """A score that depends on the request, so a test can tell which request got which answer."""
    user = body["messages"][-1]["content"]
    return str(1 + len(user) % 10)


class JudgeServer:
    def __init__(
        self,
        answer: Answer = default_answer,
        expected_key: str | None = None,
        lifetime_s: float = 120.0,
        max_requests: int = 1000,
        non_json: bool = False,
    ) -> None:
        self.answer = answer
        self.non_json = non_json
        self.expected_key = expected_key
        self.max_requests = max_requests
        self.bodies: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.statuses: list[int] = []
        self._faults: deque[int] = deque()
        self._answers: deque[str] = deque()
        self._delays: deque[float] = deque()
        self.arrivals = 0  # requests received, answered or not (a timed-out one is answered late)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True
        self._closed = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def n_requests(self) -> int:
        with self._lock:
            return len(self.bodies)

    def fail_next(self, *statuses: int) -> None:
        """The next requests get these HTTP statuses (e.g. 429, 500), one each, in order."""
        with self._lock:
            self._faults.extend(statuses)

    def answer_next(self, *texts: str) -> None:
        """The next successful requests get these answers instead of the default score."""
        with self._lock:
            self._answers.extend(texts)

    def delay_next(self, *seconds: float) -> None:
        """The next requests are answered only after these delays (to trigger client timeouts)."""
        with self._lock:
            self._delays.extend(seconds)

    def _delay(self) -> float:
        with self._lock:
            self.arrivals += 1
            return self._delays.popleft() if self._delays else 0.0

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._timer.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._server.shutdown()
        self._server.server_close()

    def _respond(self, body: dict[str, Any], authorization: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.bodies.append(body)
            self.authorizations.append(authorization)
            if len(self.bodies) >= self.max_requests:
                threading.Thread(target=self.close, daemon=True).start()
            if self.expected_key is not None and authorization != f"Bearer {self.expected_key}":
                message = f"Incorrect API key provided: {authorization.removeprefix('Bearer ')}"
                return 401, {"error": {"message": message, "type": "invalid_request_error"}}, {}
            if self._faults:
                status = self._faults.popleft()
                headers = {"retry-after": "0"} if status == 429 else {}
                return status, {"error": {"message": f"injected {status}", "type": "server_error"}}, headers
            text = self._answers.popleft() if self._answers else self.answer(body)
        if self.non_json:
            return 200, b"<html><body>Service temporarily unavailable</body></html>", {}  # type: ignore[return-value]
        completion = {
            "id": f"chatcmpl-test-{len(self.bodies)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return 200, completion, {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}}, {})
                    return
                time.sleep(server._delay())
                status, payload, headers = server._respond(json.loads(raw), self.headers.get("Authorization", ""))
                with server._lock:
                    server.statuses.append(status)
                self._send(status, payload, headers)

            def _send(self, status: int, payload: dict[str, Any] | bytes, headers: dict[str, str]) -> None:
                raw = isinstance(payload, bytes)
                data = payload if raw else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if raw else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                # A client that timed out has hung up: exactly what a timeout test provokes.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the access log
                pass

        return Handler
