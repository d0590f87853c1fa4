"""Reprocessing: more variants of a stored upload, as a new task linked to the first, in
Python and over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from imageproc import InvalidPipeline, OriginalGone, Processor, TaskStatus, task_json
from imageproc.http._app import create_app
from imageproc.testing import memory_processor, sample_image

pytestmark = pytest.mark.timeout(60)

IMAGE = sample_image(120, 80)
ALICE, BOB = "alice-key-0123456789-AbCdEfGhIj", "bob-key-0123456789-KlMnOpQrSt"
KEYS = {"alice": ALICE, "bob": "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()}


@pytest.fixture
def processor() -> Iterator[Processor]:
    proc = memory_processor(
        isolation="thread", presets={"card": "thumb=fit:32x32,png;card=fit:64x64,webp"}
    )
    yield proc
    proc.close()


def done(processor: Processor, pipeline: str, **options: object) -> str:
    task = processor.submit(IMAGE, pipeline, **options)  # type: ignore[arg-type]
    processor.run_until_idle()
    assert processor.get(task.id).status == TaskStatus.SUCCEEDED
    return task.id


def test_reprocessing_makes_only_the_missing_variants_in_a_new_linked_task(
    processor: Processor,
) -> None:
    first = done(processor, "thumb=fit:32x32,png", owner="ann", metadata={"user": "7"})
    again = processor.reprocess(first, "card")
    assert again.id != first
    assert (again.reprocess_of, again.owner, again.metadata) == (first, "ann", {"user": "7"})
    assert [v.name for v in again.pipeline.variants] == ["card"]  # thumb is made already
    assert again.source_key == processor.get(first).source_key  # no bytes stored again
    processor.run_until_idle()
    made = processor.get(again.id)
    assert [(o.name, o.width) for o in made.outputs] == [("card", 64)]
    assert made.outputs[0].key.startswith(f"outputs/{again.id}/")
    assert [o.name for o in processor.get(first).outputs] == ["thumb"]  # untouched
    assert task_json(made)["reprocess_of"] == first


def test_nothing_missing_returns_the_task_itself_and_queues_nothing(
    processor: Processor,
) -> None:
    first = done(processor, "card")
    assert processor.reprocess(first, "card").id == first
    assert processor.tasks(TaskStatus.QUEUED) == []
    every = processor.reprocess(first, "card", missing_only=False)
    assert [v.name for v in every.pipeline.variants] == ["thumb", "card"]


def test_an_original_that_is_gone_cannot_be_reprocessed(processor: Processor) -> None:
    first = done(processor, "thumb=fit:32x32,png")
    processor.storage.delete(processor.get(first).source_key)
    with pytest.raises(OriginalGone):
        processor.reprocess(first, "card")
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_a_pipeline_the_processor_refuses_at_submit_is_refused_here_too() -> None:
    with memory_processor(
        isolation="thread", presets={"card": "fit:64x64,webp"}, presets_only=True
    ) as processor:
        first = done(processor, "card")
        with pytest.raises(InvalidPipeline):
            processor.reprocess(first, "big=fit:64x64,png")
        with pytest.raises(InvalidPipeline):
            processor.reprocess(first, "unknown")


def test_reprocess_over_http_respects_owners(processor: Processor) -> None:
    with TestClient(create_app(processor, api_keys=KEYS)) as client:
        answer = client.post(
            "/upload",
            files={"image": ("a.jpg", IMAGE, "image/jpeg")},
            data={"pipeline": "thumb=fit:32x32,png"},
            headers={"Authorization": f"Bearer {ALICE}"},
        )
        first = answer.json()["id"]
        processor.run_until_idle()
        alice, bob = {"Authorization": f"Bearer {ALICE}"}, {"Authorization": f"Bearer {BOB}"}
        theirs = client.post(f"/tasks/{first}/reprocess", json={"preset": "card"}, headers=bob)
        assert theirs.status_code == 404
        made = client.post(f"/tasks/{first}/reprocess", json={"preset": "card"}, headers=alice)
        assert made.status_code == 202, made.text
        assert made.json()["reprocess_of"] == first
        assert made.json()["pipeline"] == "card=fit:64x64,webp"
        same = client.post(
            f"/tasks/{first}/reprocess", json={"pipeline": "thumb=fit:32x32,png"}, headers=alice
        )
        assert (same.status_code, same.json()["id"]) == (200, first)
        bad = client.post(f"/tasks/{first}/reprocess", json={"colour": "red"}, headers=alice)
        assert bad.status_code == 422
        processor.storage.delete(processor.get(first).source_key)
        gone = client.post(f"/tasks/{first}/reprocess", json={"preset": "card"}, headers=alice)
        assert (gone.status_code, gone.json()["error"]["code"]) == (410, "original_gone")
