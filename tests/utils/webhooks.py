"""A real HTTP server in a thread that receives campaign webhooks, for the channel and delivery tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """Records each POST (headers, body, status) and answers the next of ``answers``, else ``status``.

    While ``hang`` is set to an unset event, requests wait on it (a slow receiver).
    """

    status: int = 200
    answers: list[int] = field(default_factory=list)
    hang: threading.Event | None = None
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


@contextmanager
def webhook_receiver(path: str = "/hooks/clm?token=t0k3n") -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                status = state.answers.pop(0) if state.answers else state.status
                state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
            if state.hang is not None:
                state.hang.wait(timeout=30)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no request lines (with the URL's token) in the test output

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.hang is not None:
            state.hang.set()
        server.shutdown()
        server.server_close()
        thread.join()
