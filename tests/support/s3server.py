"""A pytest plugin: a real S3-speaking HTTP server (moto's server mode) on loopback.

``s3_server`` starts one :class:`moto.server.ThreadedMotoServer` per session on 127.0.0.1 with a
free port; ``s3_bucket`` gives each test a fresh bucket on it. The environment gets dummy
credentials and ``AWS_DEFAULT_REGION=us-east-1`` for the whole session, and anything that could
send botocore to a real account (profiles, config files, instance metadata) is switched off.

Region trap: with us-east-1, pass no ``region_name`` in s3fs ``client_kwargs``; s3fs would then
send a ``LocationConstraint`` for us-east-1 when creating a bucket, which S3 refuses. The region
comes from ``AWS_DEFAULT_REGION`` instead.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

#: The environment for the whole session: dummy credentials, a fixed region, and nothing that
#: could reach a real AWS account or the (slow, absent) instance metadata service.
S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/imageproc-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/imageproc-tests/aws-credentials",
}
#: Removed for the session so a developer's own AWS setup cannot leak into the tests.
S3_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "IMAGEPROC_S3_ENDPOINT_URL",
)


def _bindable(port: int) -> bool:
    """Whether the server could bind ``port`` now (with SO_REUSEADDR, as werkzeug does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@attrs.define
class S3Server:
    """A moto S3 server on 127.0.0.1 that a test may stop and start again on the same port."""

    #: 0 until the first start picks a free port; kept across restarts.
    port: int = 0
    _server: Any = None

    @property
    def endpoint_url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._server is not None

    def start(self) -> None:
        """Start serving on :attr:`port` (again); the stored buckets and objects are kept,
        because moto keeps its state in the process, not in the server."""
        from moto.server import ThreadedMotoServer

        if self._server is not None:
            return
        # ThreadedMotoServer binds in its own thread and waits for it forever, so a port that
        # cannot be bound would hang the test run: check first, for a bounded time.
        deadline = time.monotonic() + 5
        while self.port and not _bindable(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} did not become free again")
            time.sleep(0.05)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server
        self.port = server.get_host_and_port()[1]

    def stop(self) -> None:
        """Stop serving and close the listening socket, so clients are refused at once."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() leaves the listening socket open: new connections would
        # hang in its backlog instead of being refused, the port could not be bound again, and
        # the socket would be reported unclosed (a ResourceWarning) when collected.
        server._server.server_close()

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for an ``s3://`` storage on this server, with short timeouts so a
        test of an outage fails over quickly."""
        return {
            "endpoint_url": self.endpoint_url,
            "config_kwargs": {"connect_timeout": 2, "read_timeout": 5},
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server, to look at buckets behind the storage's back."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session, stopped at the end."""
    pytest.importorskip("moto.server")
    with pytest.MonkeyPatch.context() as patch:
        for name in S3_UNSET:
            patch.delenv(name, raising=False)
        for name, value in S3_ENVIRONMENT.items():
            patch.setenv(name, value)
        server = S3Server()
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the session's server; its name."""
    if not s3_server.running:
        s3_server.start()  # a fault test that failed half-way may have left it stopped
    name = f"test-{secrets.token_hex(6)}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        client.close()
