"""The HTTP side of webhooks: ``callback_url`` on ``POST /upload``, and ``GET /webhooks`` and
the resend endpoints, owners respected."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from imageproc import DeliveryStatus, DeliveryStore, Processor, Webhooks
from imageproc.http._app import create_app
from imageproc.testing import memory_processor, sample_image

pytestmark = pytest.mark.timeout(60)

JPEG = sample_image(64, 48)
ALICE, BOB = "alice-key-0123456789-AbCdEfGhIj", "bob-key-0123456789-KlMnOpQrSt"
KEYS = {"alice": ALICE, "bob": "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()}
#: A public address, so no name is resolved; nothing is sent in these tests (no workers run).
HOOK = "https://93.184.216.34/hooks/imageproc"


@pytest.fixture
def processor() -> Iterator[Processor]:
    proc = memory_processor(webhooks=Webhooks(secrets=[Webhooks.new_secret()]))
    yield proc
    proc.close()


@pytest.fixture
def client(processor: Processor) -> Iterator[TestClient]:
    with TestClient(create_app(processor, api_keys=KEYS)) as test_client:
        yield test_client


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {who}"}


def upload(client: TestClient, who: str = ALICE, **fields: str) -> Any:
    return client.post(
        "/upload",
        files={"image": ("cat.jpg", JPEG, "image/jpeg")},
        data={"pipeline": "fit:32x32,png", **fields},
        headers=auth(who),
    )


def dead_delivery(processor: Processor, task_id: str) -> str:
    """End the task (cancel), and make its delivery dead as a failing receiver would."""
    processor.cancel(task_id)
    store = processor.repository
    assert isinstance(store, DeliveryStore)
    [taken] = store.claim_deliveries(processor.clock(), limit=1, hold=timedelta(seconds=30))
    assert store.settle_delivery(taken.failed("answered 500", status_code=500, retry_at=None))
    return taken.id


def test_an_upload_with_a_callback_url_records_it(client: TestClient, processor: Processor) -> None:
    answer = upload(client, callback_url=HOOK)
    assert answer.status_code == 202, answer.text
    assert processor.get(answer.json()["id"]).callback_url == HOOK


def test_an_unsafe_callback_url_is_a_422_and_stores_nothing(
    client: TestClient, processor: Processor
) -> None:
    answer = upload(client, callback_url="http://169.254.169.254/latest/meta-data/")
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "unsafe_url"
    assert "link-local" in answer.json()["error"]["message"]
    assert processor.storage.keys() == []  # type: ignore[attr-defined]


def test_dead_deliveries_are_listed_and_resent_per_owner(
    client: TestClient, processor: Processor
) -> None:
    mine = dead_delivery(processor, upload(client, ALICE, callback_url=HOOK).json()["id"])
    theirs = dead_delivery(processor, upload(client, BOB, callback_url=HOOK).json()["id"])
    listed = client.get("/webhooks", headers=auth(ALICE))
    assert listed.status_code == 200
    [delivery] = listed.json()["deliveries"]
    assert delivery["id"] == mine
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "dead",
        1,
        500,
    )
    assert delivery["url"] == HOOK
    assert client.get("/webhooks?status=pending", headers=auth(ALICE)).json() == {"deliveries": []}
    # Bob's delivery is not Alice's to resend: a 404, as if it did not exist.
    refused = client.post(f"/webhooks/{theirs}/resend", headers=auth(ALICE))
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "delivery_not_found"
    resent = client.post(f"/webhooks/{mine}/resend", headers=auth(ALICE))
    assert (resent.status_code, resent.json()) == (202, {"resent": 1})
    [pending] = processor.deliveries(DeliveryStatus.PENDING)
    assert pending.id == mine
    assert client.post("/webhooks/resend", headers=auth(BOB)).json() == {"resent": 1}
    assert processor.deliveries(DeliveryStatus.DEAD) == []


@pytest.mark.parametrize(
    ("query", "code"), [("status=gone", "invalid_status"), ("limit=0", "invalid_limit")]
)
def test_a_bad_listing_query_is_a_422(client: TestClient, query: str, code: str) -> None:
    answer = client.get(f"/webhooks?{query}", headers=auth(ALICE))
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == code


def test_without_webhooks_the_endpoints_say_so_and_callback_urls_are_refused() -> None:
    with memory_processor() as processor, TestClient(create_app(processor)) as client:
        answer = client.get("/webhooks")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "webhooks_off"
        refused = client.post(
            "/upload",
            files={"image": ("cat.jpg", JPEG, "image/jpeg")},
            data={"callback_url": HOOK},
        )
        assert refused.status_code == 422
        assert "sends no webhooks" in refused.json()["error"]["message"]
