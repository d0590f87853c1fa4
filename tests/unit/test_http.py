"""The HTTP adapter through Starlette's test client, on in-memory backends: every status code,
authentication and owner isolation, signed URLs, hostile keys, body limits and error bodies."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import pytest
from PIL import Image
from starlette.testclient import TestClient

from imageproc import (
    BackendUnavailable,
    ImageLimits,
    Processor,
    QueueLimits,
    StorageError,
    TaskError,
    TaskStatus,
)
from imageproc._signing import UrlSigner
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.backends.fsspec._storage import FsspecStorage
from imageproc.http._app import create_app
from imageproc.testing import FAST_OPTIONS, FlakyStorage, memory_processor, sample_image
from tests.support.strategies import foreign_digits

pytestmark = pytest.mark.timeout(60)

JPEG = sample_image(320, 240)
PIPELINE = "thumb=fit:64x64,png;big=fit:160x160,webp"
# Keys strong enough for create_app (22+ mixed-case letters and digits: over 128 bits).
ALICE, BOB = "alice-key-0123456789-AbCdEfGhIj", "bob-key-0123456789-KlMnOpQrSt"
SIGNING, OLD_SIGNING = "signing-key-0123456789-AbCdEf", "old-signing-key-0123456789-GhIj"
KEYS = {"alice": ALICE, "bob": "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client_for(processor: Processor, **options: Any) -> TestClient:
    return TestClient(create_app(processor, **options))


@pytest.fixture
def client(processor: Processor) -> Iterator[TestClient]:
    with client_for(processor) as test_client:
        yield test_client


@pytest.fixture
def secured(processor: Processor) -> Iterator[TestClient]:
    with client_for(processor, api_keys=KEYS, signing_keys=[SIGNING]) as test_client:
        yield test_client


def upload(
    client: TestClient, data: bytes = JPEG, *, headers: dict[str, str] | None = None, **fields: str
) -> Any:
    return client.post(
        "/upload",
        files={"image": ("cat.jpg", data, "image/jpeg")},
        data=fields,
        headers=headers or {},
    )


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code
    assert "Traceback" not in response.text
    assert "/work/" not in response.text
    assert "/tmp/" not in response.text
    return body["error"]  # type: ignore[no-any-return]


def finished(client: TestClient, processor: Processor, task_id: str, **kw: Any) -> Any:
    processor.run_until_idle()
    response = client.get(f"/status/{task_id}", **kw)
    assert response.status_code == 200, response.text
    return response.json()


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


# -- upload -------------------------------------------------------------------------------------


def test_upload_status_and_image_round_trip(client: TestClient, processor: Processor) -> None:
    response = upload(client, pipeline=PIPELINE)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "status", "status_url", "created_at"}
    assert body["status"] == "queued"
    assert response.headers["location"] == body["status_url"]
    assert body["status_url"] == f"http://testserver/status/{body['id']}"
    assert body["created_at"].endswith("Z")

    task = finished(client, processor, body["id"])
    assert task["status"] == "succeeded"
    assert task["attempts"] == 1
    assert task["error"] is None
    for stamp in ("created_at", "updated_at", "started_at", "finished_at"):
        assert task[stamp].endswith("Z"), stamp
    outputs = {o["name"]: o for o in task["outputs"]}
    assert set(outputs) == {"thumb", "big"}
    thumb = outputs["thumb"]
    assert (thumb["format"], thumb["width"], thumb["height"]) == ("png", 64, 48)
    assert thumb["key"] == f"outputs/{body['id']}/thumb.png"
    query = parse_qs(urlsplit(thumb["url"]).query)
    assert set(query) == {"expires", "signature"}

    image = client.get(path_of(thumb["url"]))
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert int(image.headers["content-length"]) == len(image.content) == thumb["bytes"]
    assert image.headers["cache-control"].startswith("public, max-age=")
    assert image.headers["etag"].startswith('"')
    with Image.open(io.BytesIO(image.content)) as picture:
        assert picture.size == (64, 48)
    source = client.get(path_of(task["source"]["url"]))
    assert source.status_code == 200
    assert source.content == JPEG


def test_raw_image_body_with_query_options(client: TestClient, processor: Processor) -> None:
    response = client.post(
        "/upload?pipeline=one%3Dfit%3A32x32%2Cjpeg&priority=5",
        content=sample_image(100, 50, "PNG"),
        headers={"Content-Type": "image/png"},
    )
    assert response.status_code == 202, response.text
    task = finished(client, processor, response.json()["id"])
    assert task["priority"] == 5
    assert [(o["name"], o["width"], o["height"]) for o in task["outputs"]] == [("one", 32, 16)]


def test_pipeline_in_json_form(client: TestClient, processor: Processor) -> None:
    from imageproc import Pipeline

    document = json.dumps(Pipeline.parse("small=fit:40x40,webp").to_json())
    response = upload(client, pipeline=document)
    assert response.status_code == 202, response.text
    task = finished(client, processor, response.json()["id"])
    assert [(o["name"], o["format"]) for o in task["outputs"]] == [("small", "webp")]


def test_presets() -> None:
    processor = memory_processor(presets={"avatar": "a=fill:16x16,png"}, presets_only=True)
    with client_for(processor) as client:
        ok = upload(client, preset="avatar")
        assert ok.status_code == 202, ok.text
        assert [o["name"] for o in finished(client, processor, ok.json()["id"])["outputs"]] == ["a"]
        error = assert_error(upload(client, preset="nope"), 422, "invalid_pipeline")
        assert "nope" in error["message"]
        assert "avatar" in error["message"]
        assert_error(upload(client, pipeline="x=fit:9x9"), 422, "invalid_pipeline")
        assert_error(upload(client, preset="avatar", pipeline="x"), 422, "invalid_pipeline")


@pytest.mark.parametrize(
    ("pipeline", "named"),
    [("thumb=fit:axb", "fit"), ("{not json", "JSON"), ('{"variants": 3}', "")],
)
def test_a_bad_pipeline_is_422_naming_the_problem(
    client: TestClient, pipeline: str, named: str
) -> None:
    error = assert_error(upload(client, pipeline=pipeline), 422, "invalid_pipeline")
    assert named in error["message"]


def test_a_pipeline_nested_too_deep_is_422_not_a_recursion_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    # 5000 levels: short enough for a URL, far past Python's recursion limit.
    deep = '{"variants": ' + "[" * 5000 + "]" * 5000 + "}"
    for response in (
        upload(client, pipeline=deep),
        client.post(
            "/upload",
            params={"pipeline": deep},
            content=JPEG,
            headers={"Content-Type": "image/jpeg"},
        ),
    ):
        error = assert_error(response, 422, "invalid_pipeline")
        assert "deeper than the limit of 32" in error["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "priority",
    [
        "high",
        "1.5",
        "100000",
        # int() reads these as 5, 10 and 1000: ASCII digits only.
        foreign_digits("5", 0x0660),
        foreign_digits("10"),
        "1_000",
    ],
)
def test_a_bad_priority_is_422(client: TestClient, priority: str) -> None:
    assert_error(upload(client, priority=priority), 422, "invalid_priority")
    raw = client.post(
        "/upload",
        params={"priority": priority},
        content=JPEG,
        headers={"Content-Type": "image/jpeg"},
    )
    assert_error(raw, 422, "invalid_priority")


@pytest.mark.parametrize(
    ("not_before", "delay"),
    [("600", timedelta(minutes=10)), (" 0 ", timedelta(0))],
)
def test_not_before_in_seconds_schedules_the_task(
    client: TestClient, processor: Processor, not_before: str, delay: timedelta
) -> None:
    response = upload(client, not_before=not_before)
    assert response.status_code == 202, response.text
    task = processor.get(response.json()["id"])
    assert task.available_at - task.created_at == delay


@pytest.mark.parametrize("zone", ["Z", "z", "+09:00", "-05:30"])
def test_not_before_as_an_rfc3339_time_schedules_the_task(
    client: TestClient, processor: Processor, zone: str
) -> None:
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=250_000)
    local = at.astimezone(datetime.fromisoformat(f"2000-01-01T00:00:00{zone.upper()}").tzinfo)
    text = local.strftime("%Y-%m-%dT%H:%M:%S.%f") + zone
    response = upload(client, not_before=text)
    assert response.status_code == 202, response.text
    assert processor.get(response.json()["id"]).available_at == at
    raw = client.post(
        "/upload",
        params={"not_before": text},
        content=JPEG,
        headers={"Content-Type": "image/jpeg"},
    )
    assert raw.status_code == 202, raw.text
    assert processor.get(raw.json()["id"]).available_at == at


@pytest.mark.parametrize(
    ("not_before", "code"),
    [
        ("tomorrow", "invalid_not_before"),
        ("-5", "invalid_not_before"),
        ("1e3", "invalid_not_before"),
        (foreign_digits("60"), "invalid_not_before"),
        ("2026-12-07T20:00:00", "invalid_not_before"),  # no zone: whose 8 pm?
        ("2026-13-07T20:00:00Z", "invalid_not_before"),
        ("2026-12-07", "invalid_not_before"),
        ("9" * 19, "invalid_input"),
        ("2999-01-01T00:00:00Z", "invalid_input"),
    ],
)
def test_a_bad_not_before_is_422_and_nothing_is_queued(
    client: TestClient, processor: Processor, not_before: str, code: str
) -> None:
    error = assert_error(upload(client, not_before=not_before), 422, code)
    assert "not_before" in error["message"]
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_metadata_is_kept_and_shown_in_the_status(client: TestClient, processor: Processor) -> None:
    response = upload(client, metadata='{"user": "42", "tags": ["a"]}')
    assert response.status_code == 202, response.text
    status = client.get(f"/status/{response.json()['id']}").json()
    assert status["metadata"] == {"user": "42", "tags": ["a"]}
    raw = client.post(
        "/upload",
        params={"metadata": '{"user": "43"}'},
        content=JPEG,
        headers={"Content-Type": "image/jpeg"},
    )
    assert processor.get(raw.json()["id"]).metadata == {"user": "43"}
    plain = upload(client).json()["id"]
    assert client.get(f"/status/{plain}").json()["metadata"] == {}


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ("{user: 42}", "invalid_metadata"),
        ("[" * 3000, "invalid_metadata"),
        ('["user", "42"]', "invalid_input"),
        ('{"a b": 1}', "invalid_input"),
        ('{"x": NaN}', "invalid_input"),
        ('{"x": "' + "y" * 5000 + '"}', "invalid_input"),
        ('{"x": "' + "y" * 9000 + '"}', "invalid_input"),
    ],
)
def test_bad_metadata_is_422_and_nothing_is_queued(
    client: TestClient, processor: Processor, metadata: str, code: str
) -> None:
    error = assert_error(upload(client, metadata=metadata), 422, code)
    assert "metadata" in error["message"]
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_dedupe_answers_with_the_task_already_made(
    client: TestClient, processor: Processor
) -> None:
    first = upload(client, pipeline=PIPELINE, dedupe="true").json()["id"]
    assert upload(client, pipeline=PIPELINE, dedupe="TRUE").json()["id"] == first
    second = upload(client, pipeline=PIPELINE, dedupe="false").json()["id"]
    assert second != first
    assert upload(client, pipeline=PIPELINE).json()["id"] not in {first, second}
    raw = client.post(
        "/upload",
        params={"pipeline": PIPELINE, "dedupe": "1"},
        content=JPEG,
        headers={"Content-Type": "image/jpeg"},
    )
    assert raw.status_code == 202, raw.text
    queued = {task.id for task in processor.tasks(TaskStatus.QUEUED)}
    assert len(queued) == 3  # nothing new: the newest of the three under way answers
    assert raw.json()["id"] in queued


@pytest.mark.parametrize("dedupe", ["maybe", "2", "tru"])
def test_a_bad_dedupe_is_422(client: TestClient, processor: Processor, dedupe: str) -> None:
    error = assert_error(upload(client, dedupe=dedupe), 422, "invalid_dedupe")
    assert "dedupe" in error["message"]
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_each_owner_asks_for_at_most_its_maximum_priority(processor: Processor) -> None:
    limits = {"alice": 10, "*": -5}  # bob is "everyone else"
    with client_for(processor, api_keys=KEYS, max_priority=limits) as client:
        ok = upload(client, headers=auth(ALICE), priority="10")
        assert ok.status_code == 202, ok.text
        error = assert_error(
            upload(client, headers=auth(ALICE), priority="11"), 403, "priority_not_allowed"
        )
        assert "(10)" in error["message"]
        assert_error(upload(client, headers=auth(BOB), priority="0"), 403, "priority_not_allowed")
        assert upload(client, headers=auth(BOB), priority="-6").status_code == 202
        # Asking for nothing is asking for 0, or the maximum where that is lower.
        quiet = upload(client, headers=auth(BOB))
        assert quiet.status_code == 202, quiet.text
        assert processor.get(quiet.json()["id"]).priority == -5
    with client_for(processor, max_priority={"*": 0}) as open_app:
        assert_error(upload(open_app, priority="1"), 403, "priority_not_allowed")
        assert upload(open_app, priority="0").status_code == 202
    with client_for(processor, api_keys=KEYS) as unlimited:
        assert upload(unlimited, headers=auth(BOB), priority="1000").status_code == 202


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"carol": 5}, "carol"), ({"alice": 1001}, "alice"), ({"*": True}, "'\\*'")],
)
def test_maximum_priorities_are_checked_when_the_app_is_made(
    processor: Processor, limits: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_app(processor, api_keys=KEYS, max_priority=limits)


@pytest.mark.parametrize(
    ("options", "weak"),
    [
        ({"api_keys": {"alice": ALICE, "bob": "bobs-key"}}, "the API key of 'bob'"),
        ({"signing_keys": [SIGNING, "k"]}, "signing key 2"),
    ],
)
def test_weak_keys_are_refused_unless_allowed_then_loudly(
    processor: Processor,
    options: dict[str, Any],
    weak: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match=f"too weak to use: {weak} \\(at least 128 bits") as raised:
        create_app(processor, **options)
    assert "allow_weak_keys=True" in str(raised.value)
    assert "bobs-key" not in str(raised.value)
    with caplog.at_level("WARNING", logger="imageproc.http"):
        create_app(processor, **options, allow_weak_keys=True)
    assert [r.getMessage() for r in caplog.records if "WEAK KEYS IN USE" in r.getMessage()] == [
        f"WEAK KEYS IN USE: {weak} can be guessed; weak keys are allowed for tests and development"
        " only (allow_weak_keys, IMAGEPROC_ALLOW_WEAK_KEYS): never expose this service"
    ]
    # A digest cannot be judged: accepted without a word.
    caplog.clear()
    create_app(processor, api_keys={"bob": "sha256:" + hashlib.sha256(b"bobs-key").hexdigest()})
    assert not caplog.records


@pytest.mark.parametrize("length", ["1_000", "+1000", foreign_digits("1000"), "1e3"])
def test_a_content_length_in_anything_but_ascii_digits_is_400(
    processor: Processor, length: str
) -> None:
    headers = [(b"content-type", b"image/jpeg"), (b"content-length", length.encode())]
    messages = [{"type": "http.request", "body": JPEG[:1000], "more_body": False}]
    sent = asgi_request(create_app(processor), "POST", b"/upload", headers, messages)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    "data", [b"not an image at all", b"", sample_image(32, 32, "ICO")], ids=["text", "empty", "ico"]
)
def test_not_an_image_or_a_refused_format_is_415(client: TestClient, data: bytes) -> None:
    assert_error(upload(client, data), 415, "invalid_image")


def test_other_content_types_are_415(client: TestClient) -> None:
    response = client.post("/upload", content=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")


def test_a_form_without_the_image_is_422(client: TestClient) -> None:
    response = client.post("/upload", files={"other": ("a.jpg", JPEG, "image/jpeg")})
    assert_error(response, 422, "missing_image")
    response = client.post("/upload", files={"image": (None, b"text")})
    assert_error(response, 422)


def test_a_malformed_form_is_400(client: TestClient) -> None:
    response = client.post(
        "/upload", content=b"garbage", headers={"Content-Type": "multipart/form-data"}
    )
    assert_error(response, 400, "bad_request")


def test_oversized_uploads_are_413(processor: Processor) -> None:
    big = b"\xff\xd8" + bytes(20_000)
    with client_for(processor, max_upload_bytes=10_000) as client:
        # Declared too large: refused before a byte is read.
        assert_error(
            client.post("/upload", content=big, headers={"Content-Type": "image/jpeg"}),
            413,
            "too_large",
        )

        # Streamed without a Content-Length (chunked): cut off while counting.
        def chunks() -> Iterator[bytes]:
            for _ in range(100):
                yield bytes(1000)

        response = client.post("/upload", content=chunks(), headers={"Content-Type": "image/jpeg"})
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "too_large")
        # In a form.
        assert_error(upload(client, big), 413, "too_large")
    assert processor.repository.queue_stats().queued == 0


def test_the_image_limit_caps_the_upload_limit() -> None:
    from imageproc import ImageLimits

    processor = memory_processor(image_limits=ImageLimits(max_bytes=1000))
    with client_for(processor) as client:
        assert_error(upload(client, JPEG), 413, "too_large")


def test_a_deep_queue_is_429_with_retry_after(processor: Processor) -> None:
    with client_for(processor, max_queue_depth=1) as client:
        assert upload(client).status_code == 202
        response = upload(client)  # refused as it is recorded: no stale reading lets it in
        assert_error(response, 429, "queue_full")
        assert int(response.headers["retry-after"]) > 0
        processor.run_until_idle()
        time.sleep(0.6)  # the early check's reading is reused for half a second
        assert upload(client).status_code == 202


def test_a_burst_of_uploads_never_passes_the_queue_limit(processor: Processor) -> None:
    with client_for(processor, max_queue_depth=10) as client, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: upload(client).status_code, range(60), timeout=120))
    assert codes.count(202) == 10
    assert codes.count(429) == 50
    assert processor.repository.queue_stats().queued == 10


def test_a_retry_into_a_full_queue_is_429(processor: Processor) -> None:
    with client_for(processor, max_queue_depth=1) as client:
        task_id = upload(client).json()["id"]
        fail_one(processor)
        assert upload(client).status_code == 202  # the queue is full again
        assert_error(client.post(f"/tasks/{task_id}/retry"), 429, "queue_full")
        assert client.get(f"/status/{task_id}").json()["status"] == "failed"


def test_one_owner_cannot_fill_the_queue_for_another() -> None:
    processor = memory_processor(queue_limits=QueueLimits(max_queued_per_owner=2))
    keys = {
        "greedy": "3f9a1c7e5b2d8046a1b3c5d7e9f02468",
        "polite": "8e1d5c3b9a7f2046e8d6c4b2a0f13579",
    }
    with client_for(processor, api_keys=keys) as client:
        greedy = {"Authorization": f"Bearer {keys['greedy']}"}
        polite = {"Authorization": f"Bearer {keys['polite']}"}
        assert [upload(client, headers=greedy).status_code for _ in range(3)] == [202, 202, 429]
        assert upload(client, headers=polite).status_code == 202


def test_uploads_past_the_rate_are_429_with_retry_after() -> None:
    processor = memory_processor()
    with client_for(processor, max_uploads_per_minute=2) as client:
        assert [upload(client).status_code for _ in range(2)] == [202, 202]
        response = upload(client)
        assert_error(response, 429, "rate_limited")
        assert 1 <= int(response.headers["retry-after"]) <= 60


# -- status, cancel, retry --------------------------------------------------------------------


def test_unknown_task_is_404(client: TestClient) -> None:
    for response in (
        client.get("/status/nope"),
        client.delete("/tasks/nope"),
        client.post("/tasks/nope/retry"),
        client.get(f"/status/{'x' * 500}"),
    ):
        assert_error(response, 404, "task_not_found")


def test_cancel_then_cancel_again_is_409(client: TestClient) -> None:
    task_id = upload(client).json()["id"]
    response = client.delete(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert_error(client.delete(f"/tasks/{task_id}"), 409, "illegal_transition")


def fail_one(processor: Processor, code: str = "invalid_image", message: str = "bad") -> None:
    (lease,) = processor.queue.claim("test", lease_seconds=30)
    processor.queue.complete(lease, lease.task.fail(TaskError(code, message), processor.clock()))


def test_retry_a_failed_task(client: TestClient, processor: Processor) -> None:
    task_id = upload(client).json()["id"]
    assert_error(client.post(f"/tasks/{task_id}/retry"), 409, "illegal_transition")
    fail_one(processor)
    failed = client.get(f"/status/{task_id}").json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "invalid_image", "message": "bad"}
    response = client.post(f"/tasks/{task_id}/retry")
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert finished(client, processor, task_id)["status"] == "succeeded"


def test_server_side_task_errors_are_not_shown_verbatim(
    client: TestClient, processor: Processor
) -> None:
    task_id = upload(client).json()["id"]
    fail_one(processor, "storage_error", "storage put of '/srv/secret/x' failed: OSError")
    error = client.get(f"/status/{task_id}").json()["error"]
    assert error["code"] == "storage_error"
    assert "/srv" not in error["message"]


# -- images -------------------------------------------------------------------------------------


@pytest.fixture
def output(client: TestClient, processor: Processor) -> dict[str, Any]:
    task = finished(client, processor, upload(client, pipeline=PIPELINE).json()["id"])
    return task["outputs"][0]  # type: ignore[no-any-return]


def test_if_none_match_gives_304(client: TestClient, output: dict[str, Any]) -> None:
    first = client.get(path_of(output["url"]))
    etag = first.headers["etag"]
    for header in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        again = client.get(path_of(output["url"]), headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
    other = client.get(path_of(output["url"]), headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200


def test_head_gives_the_headers_only(client: TestClient, output: dict[str, Any]) -> None:
    response = client.head(path_of(output["url"]))
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == output["bytes"]
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"] == client.get(path_of(output["url"])).headers["etag"]


def test_missing_and_unknown_images_are_404(client: TestClient) -> None:
    assert_error(client.get("/image/outputs/none/x.png"), 404)
    assert_error(client.get("/image/other/x.png"), 404)


@pytest.fixture
def file_processor(tmp_path: Path) -> Iterator[Processor]:
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (tmp_path / "store").mkdir()
    repository = MemoryRepository()
    processor = Processor(
        FsspecStorage(f"file://{tmp_path / 'store'}"),
        MemoryQueue(repository),
        repository,
        **FAST_OPTIONS,
    )
    yield processor
    processor.close()


HOSTILE = [
    "/image/../secret.txt",
    "/image/outputs/../../secret.txt",
    "/image/%2e%2e/secret.txt",
    "/image/%2E%2E/%2E%2E/secret.txt",
    "/image/..%2fsecret.txt",
    "/image/outputs%2f..%2f..%2fsecret.txt",
    "/image//etc/passwd",
    "/image/%2fetc%2fpasswd",
    "/image/outputs/x%00.png",
    "/image/outputs/x\x00.png",
    "/image/..\\secret.txt",
    "/image/outputs%5c..%5c..%5csecret.txt",
    "/image/outputs/.hidden",
    "/image/outputs/a/./b.png",
    "/image/%252e%252e/secret.txt",
]


def asgi_request(
    app: Any,
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    messages: Sequence[dict[str, Any]] = ({"type": "http.request", "body": b""},),
    client: tuple[str, int] | None = ("127.0.0.1", 1234),
) -> list[dict[str, Any]]:
    """Call ``app`` through the ASGI interface with exactly this raw path and query and these
    headers (an HTTP client would normalise the path and write its own Content-Length),
    ``receive()`` handing out ``messages`` in order; the messages the app sent back."""
    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "server": ("testserver", 80),
        "client": client,
        "root_path": "",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [(b"host", b"testserver"), *headers],
    }
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await anyio.sleep_forever()  # a client that has sent everything sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        with anyio.fail_after(10):
            await app(scope, receive, send)

    anyio.run(call)
    return sent


def asgi_get(app: Any, raw_path: bytes) -> tuple[int, bytes]:
    """Send a GET whose raw path is exactly ``raw_path``; the status and the body."""
    sent = asgi_request(app, "GET", raw_path)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_keys_never_reach_outside_storage(file_processor: Processor, raw: str) -> None:
    app = create_app(file_processor)
    status, body = asgi_get(app, raw.encode("latin-1"))
    assert status in (400, 404), (raw, status)
    assert b"TOP SECRET" not in body
    assert json.loads(body)["error"]["code"] in ("invalid_key", "not_found")


@pytest.mark.parametrize("raw", ["/image/../secret.txt", "/image/%2e%2e/secret.txt"])
def test_hostile_keys_through_a_real_client(file_processor: Processor, raw: str) -> None:
    with client_for(file_processor) as client:
        response = client.get(raw)
        assert response.status_code in (400, 404)
        assert b"TOP SECRET" not in response.content


def test_hostile_keys_with_a_valid_signature_are_still_refused(file_processor: Processor) -> None:
    app = create_app(file_processor, signing_keys=[SIGNING])
    signature = UrlSigner([SIGNING]).sign("../secret.txt", int(time.time()) + 60)
    raw = f"/image/%2e%2e/secret.txt?expires={int(time.time()) + 60}&signature={signature}"
    status, body = asgi_get(app, raw.encode())
    assert status == 400
    assert b"TOP SECRET" not in body


def test_a_file_backed_round_trip(file_processor: Processor) -> None:
    with client_for(file_processor) as client:
        task = finished(client, file_processor, upload(client, pipeline=PIPELINE).json()["id"])
        response = client.get(path_of(task["outputs"][0]["url"]))
        assert response.status_code == 200
        assert len(response.content) == task["outputs"][0]["bytes"]


def test_a_file_backed_upload_keeps_no_sidecars_and_serves_its_types(
    file_processor: Processor, tmp_path: Path
) -> None:
    with client_for(file_processor) as client:
        task = finished(client, file_processor, upload(client, pipeline=PIPELINE).json()["id"])
        served = {
            image["key"]: client.get(path_of(image["url"])).headers["content-type"]
            for image in (task["source"], *task["outputs"])
        }
    assert served == {
        task["source"]["key"]: "image/jpeg",
        task["outputs"][0]["key"]: "image/png",
        task["outputs"][1]["key"]: "image/webp",
    }
    # Every key imageproc made carries its format's extension: no type needed writing down.
    assert not (tmp_path / "store" / ".imageproc").exists()


# -- signed URLs --------------------------------------------------------------------------------


def test_signed_urls_valid_tampered_expired_and_rotated(processor: Processor) -> None:
    with client_for(processor, api_keys=KEYS, signing_keys=[OLD_SIGNING]) as old:
        task = finished(
            old, processor, upload(old, headers=auth(ALICE)).json()["id"], headers=auth(ALICE)
        )
    out = task["outputs"][0]
    url = path_of(out["url"])
    query = parse_qs(urlsplit(out["url"]).query)
    expires, signature = query["expires"][0], query["signature"][0]
    key = out["key"]

    rotated = client_for(processor, api_keys=KEYS, signing_keys=[SIGNING, OLD_SIGNING])
    assert rotated.get(url).status_code == 200  # no API key needed
    retired = client_for(processor, api_keys=KEYS, signing_keys=[SIGNING])
    assert_error(retired.get(url), 403, "invalid_signature")

    tampered = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    for bad in (
        f"/image/{key}?expires={expires}&signature={tampered}",
        f"/image/{key}?expires={int(expires) + 60}&signature={signature}",
        f"/image/{key}?expires={expires}",
        f"/image/{key}?signature={signature}",
        f"/image/{key}?expires=abc&signature={signature}",
        f"/image/{key}?expires={expires}&signature=%FF%FE",
    ):
        assert_error(rotated.get(bad), 403, "invalid_signature")
    other_key = key.rsplit("/", 1)[0] + "/big.webp"
    assert_error(rotated.get(f"/image/{other_key}?expires={expires}&signature={signature}"), 403)

    past = int(time.time()) - 1
    expired = UrlSigner([OLD_SIGNING]).sign(key, past)
    assert_error(rotated.get(f"/image/{key}?expires={past}&signature={expired}"), 403)


def test_a_signed_url_is_accepted_only_as_it_was_written(
    client: TestClient, output: dict[str, Any]
) -> None:
    query = parse_qs(urlsplit(output["url"]).query)
    expires, signature = query["expires"][0], query["signature"][0]
    base = f"/image/{output['key']}"
    assert client.get(f"{base}?expires={expires}&signature={signature}").status_code == 200
    encoded = "".join(f"%{ord(c):02X}" for c in signature[:3]) + signature[3:]
    for other in (
        f"expires=0{expires}&signature={signature}",  # the same number, another text
        f"expires=%2B{expires}&signature={signature}",
        f"expires={expires}&signature={signature}=",  # padding the decoder would skip
        f"expires={expires}&signature={encoded}",  # percent-encoded, decoded to the same
        # Repeats: which one counts depends on the parser (Starlette's last, others' first).
        f"expires={expires}&signature=wrong&signature={signature}",
        f"expires={expires}&signature={signature}&signature={signature}",
        f"expires={expires}&expires={expires}&signature={signature}",
        f"expires={expires}&signature={signature}&x=1&x=2",
    ):
        assert_error(client.get(f"{base}?{other}"), 403, "invalid_signature")


def cache_max_age(response: Any) -> int:
    directives = [d.strip() for d in response.headers["cache-control"].split(",")]
    [max_age] = [d for d in directives if d.startswith("max-age=")]
    return int(max_age.removeprefix("max-age="))


def test_a_signed_image_is_cached_no_longer_than_its_signature_lives(processor: Processor) -> None:
    with client_for(processor, url_ttl=timedelta(minutes=5)) as client:
        task = finished(client, processor, upload(client).json()["id"])
        for image in (task["outputs"][0], task["source"]):
            expires = int(parse_qs(urlsplit(image["url"]).query)["expires"][0])
            before = time.time()
            response = client.get(path_of(image["url"]))
            assert response.status_code == 200
            assert response.headers["cache-control"].startswith("public, ")
            assert expires - before - 2 <= cache_max_age(response) <= expires - before
            # A 304 refreshes a cache's copy: it must not extend it either.
            again = client.get(path_of(image["url"]), headers={"If-None-Match": "*"})
            assert again.status_code == 304
            assert cache_max_age(again) <= expires - before
        # Unsigned in an open app, the image never expires: a year, as before.
        unsigned = client.get(f"/image/{task['outputs'][0]['key']}")
        assert unsigned.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_a_signed_image_about_to_expire_is_cached_for_what_is_left(processor: Processor) -> None:
    with client_for(processor, signing_keys=[SIGNING]) as client:
        task = finished(client, processor, upload(client).json()["id"])
        key = task["outputs"][0]["key"]
        expires = int(time.time()) + 3
        signature = UrlSigner([SIGNING]).sign(key, expires)
        response = client.get(f"/image/{key}?expires={expires}&signature={signature}")
        assert response.status_code == 200
        assert 0 <= cache_max_age(response) <= 3


def test_url_ttl_sets_the_expiry(processor: Processor) -> None:
    with client_for(processor, url_ttl=timedelta(minutes=5)) as client:
        task = finished(client, processor, upload(client).json()["id"])
    expires = int(parse_qs(urlsplit(task["outputs"][0]["url"]).query)["expires"][0])
    assert time.time() + 4 * 60 < expires <= time.time() + 6 * 60 + 1


def test_without_signing_keys_each_app_has_its_own(processor: Processor) -> None:
    with client_for(processor) as first:
        task = finished(first, processor, upload(first).json()["id"])
    url = path_of(task["outputs"][0]["url"])
    assert first.get(url).status_code == 200
    secured_other = client_for(processor, api_keys=KEYS)
    assert secured_other.get(url).status_code == 403


# -- authentication and owners ------------------------------------------------------------------


def test_api_keys_are_required(processor: Processor) -> None:
    # More failures than one address may make by default: counted by the next test, not here.
    secured = client_for(processor, api_keys=KEYS, max_auth_failures=None)
    for response in (
        secured.post("/upload", files={"image": ("a.jpg", JPEG, "image/jpeg")}),
        secured.get("/status/x"),
        secured.delete("/tasks/x"),
        secured.post("/tasks/x/retry"),
        secured.get("/readyz"),
        secured.get("/metrics"),
        secured.get("/openapi.json"),
        secured.get("/image/outputs/x/y.png"),
        secured.get("/status/x", headers=auth("wrong")),
        secured.get("/status/x", headers={"Authorization": f"Basic {ALICE}"}),
        secured.get("/status/x", headers={"Authorization": "Bearer "}),
        secured.get(
            "/status/x", headers=auth("sha256:" + hashlib.sha256(BOB.encode()).hexdigest())
        ),
    ):
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert secured.get("/healthz").status_code == 200


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_401s_from_one_address_are_answered_429_until_the_window_ends(
    processor: Processor,
) -> None:
    app = create_app(
        processor, api_keys=KEYS, max_auth_failures=3, auth_failure_window=timedelta(seconds=60)
    )
    clock = _Clock()
    app.state.imageproc.auth_failures.clock = clock
    guesser = TestClient(app, client=("203.0.113.7", 40000))
    neighbour = TestClient(app, client=("203.0.113.8", 40000))
    for guess in ("wrong-1", "wrong-2"):
        assert_error(guesser.get("/status/x", headers=auth(guess)), 401, "unauthorized")
    clock.now += 30
    assert_error(guesser.post("/upload", headers=auth("wrong-3")), 401)  # a missing key counts
    clock.now += 20  # 50 s after the first failure: 10 s of the window left
    for response in (
        guesser.get("/status/x", headers=auth("wrong-4")),
        guesser.get("/status/x"),
        # A right key is refused too: a blocked address learns nothing from its guesses.
        guesser.get("/status/x", headers=auth(ALICE)),
        guesser.post(
            "/upload", headers={**auth(ALICE), "Content-Type": "image/jpeg"}, content=JPEG
        ),
    ):
        body = assert_error(response, 429, "too_many_auth_failures")
        assert response.headers["retry-after"] == "10"
        assert "www-authenticate" not in response.headers
        assert "API key" in body["message"]
    # Other addresses are not held back, and what needs no key still works.
    assert_error(neighbour.get("/status/x", headers=auth(ALICE)), 404, "task_not_found")
    assert_error(neighbour.get("/status/x", headers=auth("wrong")), 401)
    assert guesser.get("/healthz").status_code == 200
    clock.now += 10  # the window is over: the address may try again
    assert_error(guesser.get("/status/x", headers=auth(ALICE)), 404, "task_not_found")
    assert_error(guesser.get("/status/x", headers=auth("wrong-5")), 401)


def test_an_ipv6_client_counts_by_its_64_and_no_address_is_not_counted(
    processor: Processor,
) -> None:
    app = create_app(processor, api_keys=KEYS, max_auth_failures=1)
    first = TestClient(app, client=("2001:db8:1:2::1", 40000))
    same_64 = TestClient(app, client=("2001:db8:1:2:ffff::9", 40000))
    other_64 = TestClient(app, client=("2001:db8:1:3::1", 40000))
    assert_error(first.get("/status/x"), 401)
    assert_error(same_64.get("/status/x"), 429, "too_many_auth_failures")
    assert_error(other_64.get("/status/x"), 401)
    mapped = TestClient(app, client=("::ffff:192.0.2.1", 40000))
    assert_error(mapped.get("/status/x"), 401)
    assert_error(TestClient(app, client=("192.0.2.1", 40000)).get("/status/x"), 429)

    # A server that gives no address (a Unix socket): nothing to count by, every answer a 401.
    app_without = create_app(processor, api_keys=KEYS, max_auth_failures=1)
    for _ in range(3):
        sent = asgi_request(app_without, "GET", b"/status/x", client=None)
        assert sent[0]["status"] == 401


@pytest.mark.parametrize(
    "options",
    [{"max_auth_failures": 0}, {"auth_failure_window": timedelta(0)}],
)
def test_auth_failure_limits_are_checked(processor: Processor, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="auth_failure"):
        create_app(processor, api_keys=KEYS, **options)


def test_a_key_sees_only_its_owners_tasks(secured: TestClient, processor: Processor) -> None:
    response = upload(secured, headers=auth(ALICE), pipeline=PIPELINE)
    assert response.status_code == 202
    task_id = response.json()["id"]
    assert processor.get(task_id).owner == "alice"
    task = finished(secured, processor, task_id, headers=auth(ALICE))
    key = task["outputs"][0]["key"]

    # Bob's key (configured by its hash) works, but Alice's task does not exist for him.
    assert_error(secured.get(f"/status/{task_id}", headers=auth(BOB)), 404, "task_not_found")
    assert_error(secured.delete(f"/tasks/{task_id}", headers=auth(BOB)), 404, "task_not_found")
    assert_error(secured.post(f"/tasks/{task_id}/retry", headers=auth(BOB)), 404)
    assert_error(secured.get(f"/image/{key}", headers=auth(BOB)), 404, "not_found")
    assert upload(secured, headers=auth(BOB)).status_code == 202

    # Alice fetches her output with her key, privately cached; originals need the signed URL.
    own = secured.get(f"/image/{key}", headers=auth(ALICE))
    assert own.status_code == 200
    assert own.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert_error(secured.get(f"/image/{task['source']['key']}", headers=auth(ALICE)), 404)
    assert secured.get(path_of(task["source"]["url"])).status_code == 200
    # An output key that the task does not list is not served, even to its owner.
    assert_error(secured.get(f"/image/outputs/{task_id}/other.png", headers=auth(ALICE)), 404)


# -- service endpoints and errors ---------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def processor_with(storage: Any = None, repository: Any = None) -> Processor:
    repo = MemoryRepository() if repository is None else repository
    store = MemoryStorage() if storage is None else storage
    return Processor(store, MemoryQueue(repo), repo, **FAST_OPTIONS)


def test_readyz_is_503_when_storage_is_down() -> None:
    storage = FlakyStorage(
        MemoryStorage(),
        failures=None,
        error=StorageError("cannot reach /srv/secret"),
        methods=frozenset({"exists"}),
    )
    with client_for(processor_with(storage)) as client:
        response = client.get("/readyz")
        assert_error(response, 503, "not_ready")
        assert "secret" not in response.text
        assert "retry-after" in response.headers


class BrokenRepository(MemoryRepository):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def get(self, task_id: str) -> Any:
        raise self.error

    def queue_stats(self) -> Any:
        raise self.error


def test_a_transient_backend_error_is_503(caplog: pytest.LogCaptureFixture) -> None:
    error = BackendUnavailable("psycopg: connection to 10.0.0.5 refused")
    with client_for(processor_with(repository=BrokenRepository(error))) as client:
        response = client.get("/status/abc")
        assert_error(response, 503, "backend_unavailable")
        assert "10.0.0.5" not in response.text
        assert response.headers["retry-after"] == "5"
        assert_error(client.get("/readyz"), 503, "not_ready")


def test_an_unexpected_error_is_a_generic_500(caplog: pytest.LogCaptureFixture) -> None:
    error = RuntimeError("secret detail at /srv/app/db.py")
    with client_for(processor_with(repository=BrokenRepository(error))) as client:
        response = client.get("/status/abc")
    body = assert_error(response, 500, "internal_error")
    assert "secret" not in body["message"]
    assert "unhandled error" in caplog.text  # logged for the operator


def upload_cut_short(app: Any, content_type: bytes, body: bytes) -> list[dict[str, Any]]:
    """POST ``body`` (declared twice as long) to /upload, the client disconnecting after it."""
    headers = [(b"content-type", content_type), (b"content-length", str(2 * len(body)).encode())]
    messages = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]
    return asgi_request(app, "POST", b"/upload", headers, messages)


@pytest.mark.parametrize("form", [True, False], ids=["multipart", "raw"])
def test_a_client_disconnecting_mid_upload_is_one_debug_line(
    processor: Processor, caplog: pytest.LogCaptureFixture, form: bool
) -> None:
    if form:
        boundary = b"xyz"
        content_type = b"multipart/form-data; boundary=" + boundary
        body = (
            b"--xyz\r\nContent-Disposition: form-data; name=image; filename=cat.jpg\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + JPEG[:1000]
        )
    else:
        content_type, body = b"image/jpeg", JPEG[:1000]
    caplog.set_level(logging.DEBUG, logger="imageproc.http")
    upload_cut_short(create_app(processor), content_type, body)  # raises if anything escapes
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert [r.getMessage() for r in caplog.records] == ["client disconnected during POST /upload"]
    assert processor.repository.queue_stats().queued == 0


def test_every_response_says_nosniff_and_sandbox(processor: Processor) -> None:
    with client_for(processor) as client:
        accepted = upload(client)
        task = finished(client, processor, accepted.json()["id"])
        image, source = task["outputs"][0], task["source"]
        etag = client.get(path_of(image["url"])).headers["etag"]
        responses = [
            accepted,
            upload(client, pipeline="fit:nope"),
            upload(client, priority="high"),
            client.post("/upload", content=b"x", headers={"Content-Type": "text/plain"}),
            client.get(f"/status/{task['id']}"),
            client.get("/status/nope"),
            client.delete(f"/tasks/{task['id']}"),
            client.post(f"/tasks/{task['id']}/retry"),
            client.get(path_of(image["url"])),
            client.head(path_of(image["url"])),
            client.get(path_of(image["url"]), headers={"If-None-Match": etag}),
            client.get(path_of(source["url"])),
            client.get(f"/image/{image['key']}?expires=1&signature=x"),
            client.get("/image/outputs/%2e%2e/x.png"),
            client.get("/healthz"),
            client.get("/readyz"),
            client.get("/metrics"),
            client.get("/openapi.json"),
            client.get("/nope"),
            client.put("/upload"),
        ]
    with client_for(processor, api_keys=KEYS) as secured:
        responses.append(secured.get("/openapi.json"))
    assert len({r.status_code for r in responses}) >= 9  # the statuses vary; the headers do not
    for response in responses:
        where = f"{response.request.method} {response.request.url} {response.status_code}"
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], where
        assert response.headers["content-security-policy"] == "default-src 'none'; sandbox", where


def test_originals_are_served_as_attachments_outputs_inline(
    client: TestClient, processor: Processor
) -> None:
    task = finished(client, processor, upload(client).json()["id"])
    source = client.get(path_of(task["source"]["url"]))
    assert source.status_code == 200
    assert source.headers["content-disposition"] == "attachment"
    assert source.headers["content-security-policy"] == "default-src 'none'; sandbox"
    head = client.head(path_of(task["source"]["url"]))
    assert head.headers["content-disposition"] == "attachment"
    output = client.get(path_of(task["outputs"][0]["url"]))
    assert output.status_code == 200
    assert "content-disposition" not in output.headers


def test_unknown_routes_and_methods_answer_in_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.put("/upload"), 405, "method_not_allowed")


def test_metrics(processor: Processor) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    with client_for(processor) as client:
        assert_error(client.get("/metrics"), 404, "not_found")
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("demo_total", "a demo", registry=registry).inc()
    with client_for(processor, metrics_registry=registry) as client:
        response = client.get("/metrics")
        assert response.status_code == 200
        assert "demo_total 1.0" in response.text
        assert response.headers["content-type"].startswith("text/plain")


def test_openapi_describes_every_route(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    described = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    routes = {
        (route.path.replace(":path", ""), method)
        for route in client.app.routes  # type: ignore[attr-defined]
        for method in route.methods
    }
    # Starlette answers HEAD wherever there is a GET; only /image documents it, as it matters.
    assert described == {
        (path, method) for path, method in routes if method != "HEAD" or "image" in path
    }


def test_importing_imageproc_does_not_import_starlette() -> None:
    code = "import sys, imageproc, imageproc._signing; print('starlette' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", [None, "images"])
def test_urls_are_right_when_mounted_named_or_not_under_a_route_of_the_same_name(
    processor: Processor, name: str | None
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def own_status(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the host application's own status page")

    host = Starlette(
        routes=[
            Route("/status/{task_id}", own_status, name="status"),  # same name as ours
            Mount("/images", app=create_app(processor), name=name),
        ]
    )
    with TestClient(host) as client:
        response = client.post(
            "/images/upload",
            files={"image": ("cat.jpg", JPEG, "image/jpeg")},
            data={"pipeline": PIPELINE},
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["id"]
        assert response.json()["status_url"] == f"http://testserver/images/status/{task_id}"
        processor.run_until_idle()
        status = client.get(f"/images/status/{task_id}")
        assert status.status_code == 200, status.text
        url = status.json()["outputs"][0]["url"]
        assert url.startswith(f"http://testserver/images/image/outputs/{task_id}/thumb.png?")
        assert client.get(url).status_code == 200


def test_urls_carry_the_root_path_a_proxy_serves_under(processor: Processor) -> None:
    with TestClient(create_app(processor), root_path="/pics") as client:
        response = upload(client, pipeline=PIPELINE)
        assert response.status_code == 202, response.text
        task_id = response.json()["id"]
        assert response.json()["status_url"] == f"http://testserver/pics/status/{task_id}"


def test_an_image_over_the_pixel_limit_is_a_422_that_says_so() -> None:
    # An image, readable, refused for its size: neither "unsupported media" nor too many bytes.
    processor = memory_processor(image_limits=ImageLimits(max_pixels=1000))
    with client_for(processor) as client:
        error = assert_error(upload(client, sample_image(100, 100)), 422, "image_too_large")
    assert error["message"] == "image of 100x100 pixels is over the limit of 1000 pixels"
