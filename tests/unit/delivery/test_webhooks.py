"""Webhooks' settings and signature, and one try of the sender against a receiver on
loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from imageproc import Delivery, Webhooks
from imageproc.delivery._sending import Sender
from tests.support.receiver import Arrival, Receiver

SECRET = Webhooks.new_secret()
NOW = datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC)


def delivery(url: str) -> Delivery:
    return Delivery(
        id="msg_abc",
        task_id="task-1",
        owner=None,
        url=url,
        payload='{"id":"task-1","status":"succeeded"}',
        created_at=NOW,
        next_attempt_at=NOW,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def send(settings: Webhooks, url: str) -> object:
    async def run() -> object:
        sender = Sender(settings, user_agent="test")
        try:
            return await sender.send(delivery(url), NOW)
        finally:
            await sender.aclose()

    return asyncio.run(run())


def test_the_signature_is_the_standard_webhooks_hmac_of_id_timestamp_and_body() -> None:
    body = b'{"id":"task-1"}'
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = hmac.new(key, b"msg_abc.1796691723." + body, hashlib.sha256).digest()
    headers = Webhooks(secrets=[SECRET]).headers("msg_abc", NOW, body)
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp())) == "1796691723"
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


@pytest.mark.parametrize(
    ("secret", "message"),
    [("whsec_c2hvcnQ=", "at least 24"), ("whsec_!!", "whsec_<base64>"), ("", "at least 24")],
)
def test_weak_or_malformed_secrets_are_refused(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Webhooks(secrets=[secret])


def test_new_secrets_differ_and_are_accepted() -> None:
    first, second = Webhooks.new_secret(), Webhooks.new_secret()
    assert first != second
    assert Webhooks(secrets=[first, second]).secrets == (first, second)


def test_a_try_connects_to_the_checked_address_and_names_the_host(receiver: Receiver) -> None:
    settings = Webhooks(secrets=[SECRET], allow=["localhost"])
    attempt = send(settings, f"http://localhost:{receiver.port}/hook?x=1")
    assert attempt.delivered, attempt  # type: ignore[attr-defined]
    [arrival] = receiver.got()
    assert arrival.path == "/hook?x=1"
    assert arrival.headers["host"] == f"localhost:{receiver.port}"
    assert arrival.body == b'{"id":"task-1","status":"succeeded"}'


def test_a_try_that_outlives_its_deadline_fails(receiver: Receiver) -> None:
    release = threading.Event()

    def slow(_: Arrival) -> tuple[int, dict[str, str]]:
        release.wait(10)
        return 204, {}

    receiver.answer = slow
    settings = Webhooks(secrets=[SECRET], allow=["127.0.0.1"], timeout=0.5, connect_timeout=0.5)
    try:
        attempt = send(settings, receiver.url())
    finally:
        release.set()
    assert not attempt.delivered  # type: ignore[attr-defined]
    assert attempt.error == "no answer within 0.5 s"  # type: ignore[attr-defined]
    assert attempt.seconds < 2.0  # type: ignore[attr-defined]


def test_a_url_refused_outright_is_permanent_and_sends_nothing(receiver: Receiver) -> None:
    attempt = send(Webhooks(secrets=[SECRET]), receiver.url())
    assert not attempt.delivered  # type: ignore[attr-defined]
    assert attempt.permanent  # type: ignore[attr-defined]
    assert "loopback" in attempt.error  # type: ignore[attr-defined]
    assert receiver.got() == []
