"""``imageproc serve`` against slow and greedy clients, and what its access log keeps.

Each test runs the real command on a free port with short deadlines set through ``IMAGEPROC_*``
variables, and talks to it over raw sockets: a client dribbling its headers, one dribbling an
upload (whose temporary file must go with it), connections over the limit, uploads of one API
key over its bound, and a signed URL that must not reach the access log whole.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import select
import socket
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from tests.support.processes import ServeProcess, environment, free_port

pytest.importorskip("imageproc.http", reason="the http extra is not installed")

from imageproc.http.serving import RedactQuerySecrets, redact_query_secrets

pytestmark = pytest.mark.timeout(120)

KEY, OTHER_KEY = "alice-key-0123456789-AbCdEfGhIj", "bob-key-0123456789-KlMnOpQrSt"


class Serve(ServeProcess):
    """``imageproc serve`` in a temporary folder, its log in a file (a pipe could fill up)."""

    def __init__(self, folder: Path, **settings: str) -> None:
        port = free_port()
        self.tmp = folder / "tmp"
        self.tmp.mkdir()
        env = environment(
            IMAGEPROC_DATABASE_URL=f"sqlite:///{folder / 'tasks.db'}",
            IMAGEPROC_STORAGE_URL=f"file://{folder / 'store'}",
            IMAGEPROC_PORT=str(port),
            IMAGEPROC_SIGNING_KEYS="test-signing-key-0123456789-AbCdEf",
            TMPDIR=str(self.tmp),  # where uploads past 1 MiB spool
            **{f"IMAGEPROC_{name.upper()}": value for name, value in settings.items()},
        )
        super().__init__(folder, port, env, "--no-workers")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body or None, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()  # headers: any case
        finally:
            connection.close()

    def spooled_files(self) -> list[str]:
        """The temporary files the server holds open (unlinked or not) in its TMPDIR."""
        held = []
        for fd in Path(f"/proc/{self.process.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith(str(self.tmp)):
                held.append(target)
        return held


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Serve]]:
    started: list[Serve] = []

    class Started(Serve):
        def __init__(self, **settings: str) -> None:
            folder = tmp_path / f"serve-{len(started)}"
            folder.mkdir()
            super().__init__(folder, **settings)
            started.append(self)

    yield Started  # type: ignore[misc]
    for server in started:
        server.stop()


def rest_of_answer(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """What the server sends until it closes the connection (or ``timeout`` passes): an answer's
    head and body may come in separate packets."""
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.1)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def closed_by_server(sock: socket.socket, timeout: float, dribble: bytes = b"") -> bytes | None:
    """Send ``dribble`` a byte every 0.2 s until the server answers or closes; what it sent then
    (``b""`` for a bare close), or None if it still held the connection after ``timeout``."""
    deadline = time.monotonic() + timeout
    position = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            return rest_of_answer(sock)
        if position < len(dribble):
            try:
                sock.sendall(dribble[position : position + 1])
            except (BrokenPipeError, ConnectionResetError):
                return b""
            position += 1
    return None


def png(size: tuple[int, int] = (32, 24)) -> bytes:
    out = BytesIO()
    Image.new("RGB", size, "teal").save(out, "PNG")
    return out.getvalue()


# -- request headers --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_client_dribbling_its_headers_is_cut_off_at_the_header_deadline(
    serve: type[Serve],
) -> None:
    server = serve(header_timeout="1", keep_alive_timeout="1")
    silent, dribbling = server.connect(), server.connect()
    with silent, dribbling:
        started = time.monotonic()
        dribbling.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = closed_by_server(dribbling, timeout=8, dribble=b"X-Slow: " + b"a" * 100)
        elapsed = time.monotonic() - started
        assert answer is not None, "a client dribbling headers was held for 8 s"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
        assert 0.8 < elapsed < 4, elapsed
        # One that connects and sends nothing at all is closed too.
        assert closed_by_server(silent, timeout=4) is not None
    # Headers that come in time are served as ever, on a connection kept alive...
    with server.connect() as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}')
        # ...until it has been idle for the keep-alive timeout.
        started = time.monotonic()
        assert closed_by_server(sock, timeout=4) == b""
        assert 0.8 < time.monotonic() - started < 3
    assert "no complete request headers within 1 s" in server.log()


# -- request bodies ---------------------------------------------------------------------------


BOUNDARY = "hardening-test-boundary"
FORM_START = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content_type", "start"),
    [("image/png", b""), (f"multipart/form-data; boundary={BOUNDARY}", FORM_START)],
    ids=["raw", "multipart"],
)
def test_a_client_dribbling_an_upload_is_dropped_and_its_temporary_file_removed(
    serve: type[Serve], content_type: str, start: bytes
) -> None:
    # The grace period is 1 s; past it the body must average 4 MiB/s, which its first 2 MiB do
    # (they arrive at once) but a byte every 0.2 s after them does not.
    server = serve(body_timeout="1", body_min_rate="4M")
    with server.connect() as sock:
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 4194304\r\n\r\n".encode()
            + start
            + b"\0" * (2 * 1024 * 1024)
        )
        # Past 1 MiB the body spools to a temporary file, held while the upload is in progress.
        deadline = time.monotonic() + 5
        while not server.spooled_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.spooled_files(), "the upload never reached a temporary file"
        started = time.monotonic()
        answer = closed_by_server(sock, timeout=10, dribble=b"\0" * 100)
        elapsed = time.monotonic() - started
    assert answer is not None, "a client dribbling its body was held for 10 s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
    if answer:
        assert b'"request_timeout"' in answer
    assert elapsed < 5, elapsed
    deadline = time.monotonic() + 5
    while server.spooled_files() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.spooled_files() == []
    log = server.log()
    assert "its body came too slowly" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_stalled_body_is_dropped_after_the_pause_allowed(serve: type[Serve]) -> None:
    server = serve(body_timeout="1", body_min_rate="off")
    with server.connect() as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"\0" * 10
        )
        started = time.monotonic()
        answer = closed_by_server(sock, timeout=8)
        elapsed = time.monotonic() - started
    assert answer is not None
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert 0.8 < elapsed < 4, elapsed


# -- connections and uploads ------------------------------------------------------------------


@pytest.mark.slow
def test_a_request_over_the_connection_limit_gets_503(serve: type[Serve]) -> None:
    server = serve(max_connections="3")
    idle = [server.connect(), server.connect()]
    try:
        time.sleep(0.3)  # let the server take them in
        # Two open plus this one: three, all served.
        assert server.request("GET", "/healthz")[0] == 200
        idle.append(server.connect())
        time.sleep(0.3)
        status, headers, body = server.request("GET", "/healthz")
        assert (status, body) == (503, b"Service Unavailable")
        assert headers["connection"] == "close"
        idle.pop().close()
        time.sleep(0.3)
        assert server.request("GET", "/healthz")[0] == 200
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
def test_uploads_of_one_key_over_its_bound_get_429_with_retry_after(serve: type[Serve]) -> None:
    server = serve(api_keys=f"alice:{KEY},bob:{OTHER_KEY}", max_uploads_per_key="1")
    alice = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"}
    with server.connect() as pending:
        # One upload in progress: its headers and half its body, the rest still to come.
        pending.sendall(
            f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"\0" * 500
        )
        time.sleep(0.3)
        status, headers, body = server.request("POST", "/upload", png(), alice)
        assert status == 429, body
        assert headers["Retry-After"] == "5"
        assert json.loads(body)["error"]["code"] == "too_many_uploads"
        # Another key is not held back by alice's uploads.
        bob = {"Authorization": f"Bearer {OTHER_KEY}", "Content-Type": "image/png"}
        assert server.request("POST", "/upload", png(), bob)[0] == 202
    time.sleep(0.3)  # the pending upload's connection is gone, and its count with it
    assert server.request("POST", "/upload", png(), alice)[0] == 202


# -- the access log ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_access_log_shows_no_signature(serve: type[Serve]) -> None:
    server = serve(api_keys=f"alice:{KEY}")
    auth = {"Authorization": f"Bearer {KEY}"}
    status, _, body = server.request(
        "POST", "/upload", png(), {**auth, "Content-Type": "image/png"}
    )
    assert status == 202, body
    task = json.loads(server.request("GET", f"/status/{json.loads(body)['id']}", b"", auth)[2])
    url = task["source"]["url"]
    signature = url.split("signature=")[1]
    path = url.split(str(server.port), 1)[1]
    assert server.request("GET", path)[0] == 200
    server.stop()
    log = server.log()
    assert f'{path.split("signature=")[0]}signature=[redacted] HTTP/1.1" 200' in log
    assert signature not in log


def test_redaction_finds_secrets_however_they_are_spelt() -> None:
    assert redact_query_secrets("/a?expires=1&signature=abc") == "/a?expires=1&signature=[redacted]"
    assert redact_query_secrets("/a?%73ignature=abc&x=1") == "/a?%73ignature=[redacted]&x=1"
    assert redact_query_secrets("/a?b?SIGNATURE=abc") == "/a?b?SIGNATURE=[redacted]"
    assert redact_query_secrets("/a?api_key=k;token=t") == "/a?api_key=[redacted];token=[redacted]"
    assert redact_query_secrets("/a?preset=thumb") == "/a?preset=thumb"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s" %d',
        ("127.0.0.1:5", "GET", "/i?signature=s", 200), None,
    )  # fmt: skip
    assert RedactQuerySecrets().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /i?signature=[redacted]" 200'
