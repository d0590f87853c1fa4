"""The ``Idempotency-Key`` header on ``POST /upload``: replays answered as the first request was,
conflicts and bad keys refused with 422, keys scoped to the API key's owner."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from imageproc import Processor, QueueLimits, TaskStatus
from imageproc.http._app import create_app
from imageproc.testing import FastForwardClock, memory_processor, sample_image

pytestmark = pytest.mark.timeout(60)

JPEG = sample_image(320, 240)
PIPELINE = "thumb=fit:64x64,png"
ALICE, BOB = "alice-key-0123456789-AbCdEfGhIj", "bob-key-0123456789-KlMnOpQrSt"
KEYS = {"alice": ALICE, "bob": "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()}


@pytest.fixture
def clock() -> FastForwardClock:
    return FastForwardClock()


@pytest.fixture
def processor(clock: FastForwardClock) -> Iterator[Processor]:
    proc = memory_processor(clock=clock, idempotency_retention=timedelta(hours=2))
    yield proc
    proc.close()


@pytest.fixture
def client(processor: Processor) -> Iterator[TestClient]:
    with TestClient(create_app(processor, api_keys=KEYS)) as test_client:
        yield test_client


def upload(
    client: TestClient, key: str | None, *, who: str = ALICE, data: bytes = JPEG, **fields: str
) -> Any:
    headers = {"Authorization": f"Bearer {who}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(
        "/upload",
        files={"image": ("cat.jpg", data, "image/jpeg")},
        data={"pipeline": PIPELINE, **fields},
        headers=headers,
    )


def error_of(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


def test_a_replay_is_answered_as_the_first_request_was(
    client: TestClient, processor: Processor
) -> None:
    first = upload(client, "8e03978e-40d5-43e8-bc93-6894a57f9324")
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    processor.run_until_idle()  # the task has moved on since
    again = upload(client, "8e03978e-40d5-43e8-bc93-6894a57f9324")
    assert again.status_code == 202
    assert again.json() == first.json()  # "queued", as first answered
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(processor.tasks(TaskStatus.SUCCEEDED)) == 1
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_a_replay_after_the_task_was_purged_still_gets_the_first_answer(
    client: TestClient, processor: Processor, clock: FastForwardClock
) -> None:
    first = upload(client, "k")
    processor.run_until_idle()
    clock.advance(600)
    assert processor.purge(timedelta(minutes=1)) == 1
    again = upload(client, "k")
    assert (again.status_code, again.json()) == (202, first.json())


def test_the_sf_string_form_of_the_header_is_the_same_key(client: TestClient) -> None:
    bare = upload(client, 'a"b\\c')
    quoted = upload(client, '"a\\"b\\\\c"')
    assert quoted.status_code == 202, quoted.text
    assert quoted.json()["id"] == bare.json()["id"]


def test_the_same_key_for_another_request_is_a_422_conflict(
    client: TestClient, processor: Processor
) -> None:
    upload(client, "k")
    message = error_of(
        upload(client, "k", data=sample_image(321, 240)), 422, "idempotency_conflict"
    )
    assert "'k' was already used for a different request" in message
    error_of(upload(client, "k", pipeline="thumb=fit:65x64,png"), 422, "idempotency_conflict")
    error_of(upload(client, "k", priority="3"), 422, "idempotency_conflict")
    assert len(processor.tasks(TaskStatus.QUEUED)) == 1


def test_keys_of_two_owners_never_meet(client: TestClient, processor: Processor) -> None:
    alice = upload(client, "k").json()["id"]
    bob = upload(client, "k", who=BOB, data=sample_image(321, 240))
    assert bob.status_code == 202, bob.text
    assert bob.json()["id"] != alice
    assert len(processor.tasks(TaskStatus.QUEUED)) == 2


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "must not be empty"),
        ('""', "must not be empty"),
        ("k" * 256, "at most 255"),
        ("caf\u00e9".encode(), "printable ASCII"),  # as UTF-8 bytes: headers are bytes
        ("tab\there", "printable ASCII"),
    ],
)
def test_a_bad_key_is_a_422_and_nothing_is_stored(
    client: TestClient, processor: Processor, key: str | bytes, message: str
) -> None:
    response = client.post(
        "/upload",
        files={"image": ("cat.jpg", JPEG, "image/jpeg")},
        headers=[(b"Authorization", f"Bearer {ALICE}".encode()), (b"Idempotency-Key", key)],
    )
    assert message in error_of(response, 422, "invalid_idempotency_key")
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_two_key_headers_are_refused(client: TestClient, processor: Processor) -> None:
    response = client.post(
        "/upload",
        files={"image": ("cat.jpg", JPEG, "image/jpeg")},
        headers=[
            ("Authorization", f"Bearer {ALICE}"),
            ("Idempotency-Key", "a"),
            ("Idempotency-Key", "b"),
        ],
    )
    assert "one Idempotency-Key" in error_of(response, 422, "invalid_idempotency_key")
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_a_raw_body_upload_takes_the_key_too(client: TestClient) -> None:
    def raw() -> Any:
        return client.post(
            "/upload",
            params={"pipeline": PIPELINE},
            content=JPEG,
            headers={
                "Content-Type": "image/jpeg",
                "Authorization": f"Bearer {ALICE}",
                "Idempotency-Key": "raw",
            },
        )

    first, again = raw(), raw()
    assert first.status_code == 202, first.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"


def test_the_openapi_document_names_the_header(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {ALICE}"}).json()
    post = spec["paths"]["/upload"]["post"]
    headers = [p for p in post["parameters"] if p["in"] == "header"]
    assert [p["name"] for p in headers] == ["Idempotency-Key"]
    assert "Idempotent-Replayed" in post["responses"]["202"]["headers"]


def test_a_replay_is_answered_even_when_the_queue_is_full(processor: Processor) -> None:
    processor.queue_limits = QueueLimits(max_queued=1)
    with TestClient(create_app(processor, api_keys=KEYS)) as client:
        first = upload(client, "k")
        assert first.status_code == 202, first.text
        # The first request's own task fills the queue; its retry is still its answer.
        again = upload(client, "k")
        assert (again.status_code, again.json()) == (202, first.json())
        # A new request, with or without a key, is refused as ever.
        error_of(upload(client, "other", data=sample_image(321, 240)), 429, "queue_full")
        error_of(upload(client, None, data=sample_image(322, 240)), 429, "queue_full")
