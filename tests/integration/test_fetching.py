"""Fetching images from URLs (``submit_url``, the form field ``url``) against a real server on
loopback, allowlisted in these tests only: hostile URLs are refused before any connection,
and a slow, silent, oversized or lying server ends in a clear error with nothing stored."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from starlette.testclient import TestClient

from imageproc import (
    FetchFailed,
    Fetching,
    ImageLimits,
    InvalidImage,
    Processor,
    TaskStatus,
    UnsafeURL,
)
from imageproc.http._app import create_app
from imageproc.testing import sample_image

pytestmark = pytest.mark.timeout(60)

JPEG = sample_image(120, 80)
LIMIT = 64 * 1024


class Source:
    """An image server on loopback; ``paths`` records what was asked of it."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.release = threading.Event()
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.paths.append(self.path)
                route = getattr(source, "route_" + self.path.strip("/").split("?")[0], None)
                if route is None:
                    self._send(404, b"not here", "text/plain")
                else:
                    route(self)

            def _send(self, status: int, body: bytes, kind: str, **headers: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def route_cat(self, h: Any) -> None:
        h._send(200, JPEG, "image/jpeg")

    def route_liar(self, h: Any) -> None:
        h._send(200, b"<html><body>not a picture</body></html>", "image/jpeg")

    def route_huge(self, h: Any) -> None:
        h._send(200, b"\xff" * (LIMIT + 1), "image/jpeg")

    def route_huge_chunked(self, h: Any) -> None:
        h.send_response(200)
        h.send_header("content-type", "image/jpeg")
        h.end_headers()  # no length: the fetch must stop counting, not trust a header
        for _ in range(LIMIT // 1024 + 2):
            h.wfile.write(b"\xff" * 1024)

    def route_slow(self, h: Any) -> None:
        h.send_response(200)
        h.send_header("content-type", "image/jpeg")
        h.send_header("content-length", str(len(JPEG)))
        h.end_headers()
        for i in range(0, len(JPEG), 100):  # 100 bytes a 0.2 s: far past the deadline
            if self.release.wait(0.2):
                return
            h.wfile.write(JPEG[i : i + 100])

    def route_never(self, h: Any) -> None:
        self.release.wait(30)

    def route_to_private(self, h: Any) -> None:
        h._send(302, b"", "text/plain", location="http://10.0.0.1/cat")

    def route_to_metadata(self, h: Any) -> None:
        h._send(307, b"", "text/plain", location="http://169.254.169.254/latest/meta-data")

    def route_around(self, h: Any) -> None:
        h._send(302, b"", "text/plain", location="/around")

    def route_to_cat(self, h: Any) -> None:
        h._send(301, b"", "text/plain", location="/cat")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source() -> Iterator[Source]:
    server = Source()
    yield server
    server.close()


@pytest.fixture
def processor() -> Iterator[Processor]:
    fetching = Fetching(allow=["127.0.0.1"], timeout=1.5, connect_timeout=1.0)
    with Processor.in_memory(
        fetching=fetching, isolation="thread", image_limits=ImageLimits(max_bytes=LIMIT)
    ) as proc:
        yield proc


def nothing_stored(processor: Processor) -> None:
    assert processor.storage.keys() == []  # type: ignore[attr-defined]
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_an_image_is_fetched_and_processed(processor: Processor, source: Source) -> None:
    task = processor.submit_url(source.url("to_cat"), "small=fit:32x32,png", owner="ann")
    assert source.paths == ["/to_cat", "/cat"]  # one redirect followed, and checked
    processor.start(workers=1)
    done = processor.wait(task.id, timeout=30)
    assert done.status == TaskStatus.SUCCEEDED
    assert (done.source.width, done.source.height, done.owner) == (120, 80, "ann")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://localhost:{port}/cat", "localhost"),
        ("http://[::1]:{port}/cat", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/cat", "IPv4-mapped loopback"),
        ("http://0.0.0.0:{port}/cat", "unspecified"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://10.0.0.1/cat", "private"),
        ("http://2130706433:{port}/cat", "is 127.0.0.1"),
        ("http://0177.0.0.1:{port}/cat", "is 127.0.0.1"),
        ("file:///etc/passwd", "http"),
        ("ftp://example.com/cat.jpg", "http"),
        ("http://user:secret@127.0.0.1:{port}/cat", "user"),
    ],
)
def test_hostile_urls_are_refused_before_any_connection(
    source: Source, url: str, says: str
) -> None:
    strict = Fetching(timeout=1.5)  # no allowlist: loopback is refused too
    with Processor.in_memory(fetching=strict, isolation="thread") as processor:
        with pytest.raises(UnsafeURL, match=says):
            processor.submit_url(url.format(port=source.port), "png")
        nothing_stored(processor)
    assert source.paths == []


def test_a_name_that_resolves_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, source: Source
) -> None:
    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "images.example.com"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)  # a resolver the test controls
    with Processor.in_memory(fetching=Fetching(), isolation="thread") as processor:
        with pytest.raises(UnsafeURL, match=r"resolves to 10\.1\.2\.3, a private address"):
            processor.submit_url("https://images.example.com/cat.jpg", "png")
        nothing_stored(processor)


@pytest.mark.parametrize("path", ["to_private", "to_metadata"])
def test_a_redirect_to_a_private_address_is_refused(
    processor: Processor, source: Source, path: str
) -> None:
    with pytest.raises(UnsafeURL, match=r"private|metadata"):
        processor.submit_url(source.url(path), "png")
    nothing_stored(processor)


def test_more_than_three_redirects_fail(processor: Processor, source: Source) -> None:
    with pytest.raises(FetchFailed, match="more than 3 redirects") as raised:
        processor.submit_url(source.url("around"), "png")
    assert not raised.value.transient
    assert len(source.paths) == 4


@pytest.mark.parametrize("path", ["slow", "never"])
def test_a_slow_or_silent_server_fails_within_the_timeout(
    processor: Processor, source: Source, path: str
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"did not answer within 1\.5 s") as raised:
        processor.submit_url(source.url(path), "png")
    assert time.monotonic() - started < 5.0
    assert raised.value.transient
    nothing_stored(processor)


@pytest.mark.parametrize("path", ["huge", "huge_chunked"])
def test_more_bytes_than_the_limit_fail(processor: Processor, source: Source, path: str) -> None:
    with pytest.raises(FetchFailed, match=f"limit of {LIMIT}"):
        processor.submit_url(source.url(path), "png")
    nothing_stored(processor)


def test_a_body_that_is_not_the_image_it_claims_is_refused(
    processor: Processor, source: Source
) -> None:
    with pytest.raises(InvalidImage):
        processor.submit_url(source.url("liar"), "png")
    nothing_stored(processor)


def test_an_error_answer_fails_and_says_so(processor: Processor, source: Source) -> None:
    with pytest.raises(FetchFailed, match="answered 404") as raised:
        processor.submit_url(source.url("gone"), "png")
    assert not raised.value.transient


def test_a_host_allowlist_keeps_fetches_to_those_hosts(source: Source) -> None:
    only_cdn = Fetching(allow=["127.0.0.1"], hosts=["cdn.example.com"])
    with (
        Processor.in_memory(fetching=only_cdn, isolation="thread") as processor,
        pytest.raises(UnsafeURL, match="not one of the hosts"),
    ):
        processor.submit_url(source.url("cat"), "png")
    assert source.paths == []


def test_the_upload_form_takes_a_url(processor: Processor, source: Source) -> None:
    with TestClient(create_app(processor)) as client:
        ok = client.post("/upload", data={"url": source.url("cat"), "pipeline": "png"})
        assert ok.status_code == 202, ok.text
        assert processor.get(ok.json()["id"]).source.width == 120
        refused = client.post("/upload", data={"url": "http://10.0.0.1/cat.jpg"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, "unsafe_url")
        silent = client.post("/upload", data={"url": source.url("never")})
        assert silent.status_code == 502
        assert silent.json()["error"]["code"] == "fetch_failed"
        assert silent.headers["retry-after"]
        both = client.post(
            "/upload",
            data={"url": source.url("cat")},
            files={"image": ("a.jpg", JPEG, "image/jpeg")},
        )
        assert (both.status_code, both.json()["error"]["code"]) == (422, "missing_image")


class TlsSource:
    """An HTTPS image server on loopback with a certificate for ``name`` from a test CA; it
    notes the name each client asked for in SNI, and the Host header."""

    def __init__(self, ca: Any, name: str) -> None:
        import ssl

        self.sni: list[str | None] = []
        self.hosts: list[str | None] = []
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.hosts.append(self.headers.get("host"))
                self.send_response(200)
                self.send_header("content-type", "image/jpeg")
                self.send_header("content-length", str(len(JPEG)))
                self.end_headers()
                self.wfile.write(JPEG)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(name).configure_cert(context)
        context.sni_callback = lambda _sock, server_name, _ctx: self.sni.append(server_name)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A test CA that the fetching client trusts, and names that resolve to 127.0.0.1."""
    import ssl

    import trustme

    from imageproc import _pinned

    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    monkeypatch.setattr(_pinned, "_tls", lambda: context)
    real = socket.getaddrinfo

    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return ca


def test_https_names_the_host_in_sni_and_host_while_connecting_to_the_checked_address(
    tls: Any, processor: Processor
) -> None:
    server = TlsSource(tls, "images.test")
    try:
        data = processor.fetch(f"https://images.test:{server.port}/cat.jpg")
    finally:
        server.close()
    assert data == JPEG
    assert server.sni == ["images.test"]
    assert server.hosts == [f"images.test:{server.port}"]


def test_https_checks_the_certificate_against_the_name_not_the_address(
    tls: Any, processor: Processor
) -> None:
    server = TlsSource(tls, "other.test")  # a valid certificate, for another name
    try:
        with pytest.raises(FetchFailed, match="could not fetch") as raised:
            processor.fetch(f"https://images.test:{server.port}/cat.jpg")
    finally:
        server.close()
    assert "images.test" in str(raised.value.__cause__)  # "doesn't match 'images.test'"
    assert server.hosts == []  # no request was sent over the refused connection


def test_a_fetch_called_from_a_coroutine_still_works(processor: Processor, source: Source) -> None:
    import asyncio

    async def inside_a_loop() -> bytes:
        return processor.fetch(source.url("cat"))  # blocking, but not refused

    assert asyncio.run(inside_a_loop()) == JPEG
