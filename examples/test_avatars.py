"""Tests of ``examples/avatars.py`` written with imageproc.testing: no database, no folder, no
threads unless a test asks for them. Run them with ``pytest examples/test_avatars.py``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from avatars import PRESETS, AvatarError, avatar, upload_avatar
from PIL import Image
from starlette.testclient import TestClient

from imageproc import Processor, TaskStatus
from imageproc.http import create_app
from imageproc.testing import FlakyStorage, memory_processor, sample_image


@pytest.fixture
def processor() -> Iterator[Processor]:
    # Everything in memory, with short polls and backoffs; workers (if a test starts any) are
    # stopped after the test.
    processor = memory_processor(presets=PRESETS)
    yield processor
    processor.close()


def sizes(images: dict[str, bytes]) -> dict[str, tuple[str | None, tuple[int, int]]]:
    result = {}
    for name, data in images.items():
        with Image.open(io.BytesIO(data)) as image:
            result[name] = (image.format, image.size)
    return result


def test_an_upload_becomes_two_square_avatars(processor: Processor) -> None:
    task_id = upload_avatar(processor, "alice", sample_image(1200, 800))
    assert avatar(processor, task_id) is None  # queued: nothing has processed it yet

    assert processor.run_until_idle() == 1  # process every due task, here, in this thread

    made = avatar(processor, task_id)
    assert made is not None
    assert sizes(made) == {"small": ("WEBP", (64, 64)), "large": ("WEBP", (256, 256))}
    assert processor.get(task_id).owner == "alice"


def test_a_file_that_is_not_a_picture_is_refused(processor: Processor) -> None:
    with pytest.raises(AvatarError, match="not a picture"):
        upload_avatar(processor, "alice", b"GIF89a but not really")
    assert processor.run_until_idle() == 0  # nothing was queued


def test_a_storage_hiccup_is_retried_in_place(processor: Processor) -> None:
    task_id = upload_avatar(processor, "bob", sample_image(300, 300))
    # The next storage read or write fails once, as a transient error.
    processor.storage = flaky = FlakyStorage(processor.storage, failures=1)

    processor.run_until_idle()

    assert flaky.failed == 1
    assert avatar(processor, task_id) is not None
    assert processor.get(task_id).attempts == 1  # retried in place, not requeued


def test_storage_that_stays_down_makes_the_avatar_fail() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    # A clock the test moves: backoff delays pass without sleeping.
    processor = memory_processor(presets=PRESETS, max_attempts=2, clock=lambda: now)
    task_id = upload_avatar(processor, "carol", sample_image(300, 300))
    processor.storage = FlakyStorage(processor.storage, failures=None)  # every get/put fails

    assert processor.run_until_idle() == 1
    task = processor.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.QUEUED, 1)  # back in the queue, later
    assert task.error is not None
    assert task.error.code == "storage_error"
    assert avatar(processor, task_id) is None
    assert processor.run_until_idle() == 0  # not due yet: its backoff delay has not passed

    now += timedelta(minutes=15)
    assert processor.run_until_idle() == 1
    assert processor.get(task_id).status == TaskStatus.DEAD  # out of attempts
    with pytest.raises(AvatarError, match="dead"):
        avatar(processor, task_id)


def test_with_worker_threads(processor: Processor) -> None:
    ids = [upload_avatar(processor, f"user{n}", sample_image(400 + n, 300)) for n in range(4)]

    processor.start(workers=2)  # as the application does; the fixture stops them
    done = [processor.wait(task_id, timeout=30) for task_id in ids]  # WaitTimeout after 30 s

    assert [task.status for task in done] == [TaskStatus.SUCCEEDED] * 4


def test_the_http_api_in_process(processor: Processor) -> None:
    # The HTTP adapter is a Starlette app: Starlette's TestClient drives it in this process.
    client = TestClient(create_app(processor))
    reply = client.post(
        "/upload",
        files={"image": ("me.jpg", sample_image(800, 600), "image/jpeg")},
        data={"preset": "avatar"},
    )
    assert reply.status_code == 202
    processor.run_until_idle()

    task = client.get(f"/status/{reply.json()['id']}").json()
    assert task["status"] == "succeeded"
    small = client.get(task["outputs"][0]["url"])  # the signed URL
    assert small.headers["content-type"] == "image/webp"
    assert sizes({"small": small.content}) == {"small": ("WEBP", (64, 64))}
