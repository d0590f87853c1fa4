"""A webhook receiver on loopback for the tests: a real HTTP server in a thread that records
every request it gets and answers as the test tells it to."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs


@attrs.frozen
class Arrival:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    #: time.monotonic() when it arrived.
    at: float


#: How the receiver answers: status, extra headers.
Answer = Callable[[Arrival], tuple[int, dict[str, str]]]


def no_content(_: Arrival) -> tuple[int, dict[str, str]]:
    return 204, {}


class Receiver:
    """Records requests to ``http://127.0.0.1:<port>/…``; answers with ``answer``."""

    def __init__(self, port: int = 0, answer: Answer = no_content) -> None:
        self.answer = answer
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                arrival = Arrival(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                    time.monotonic(),
                )
                with receiver._lock:
                    receiver.arrivals.append(arrival)
                status, headers = receiver.answer(arrival)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Arrival]:
        """The arrivals, once there are ``count`` of them (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.got()
            if len(got) >= count:
                return got
            time.sleep(0.01)
        raise AssertionError(f"{len(self.got())} request(s) arrived, not {count}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
