"""One JSON document for a task, wherever it is shown."""

from __future__ import annotations

import attrs
import pytest
from starlette.testclient import TestClient

from imageproc._task import TaskError, TaskStatus
from imageproc._taskjson import task_json
from imageproc.engine._imaging import probe
from imageproc.http._app import create_app
from imageproc.testing import memory_processor, sample_image


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_the_upright_size_of_a_turned_upload_is_reported_too(fmt: str) -> None:
    info = probe(sample_image(1200, 800, fmt, orientation=6))
    assert (info.width, info.height, info.orientation) == (1200, 800, 6)
    assert info.display_size == (800, 1200)
    assert probe(sample_image(1200, 800, fmt)).display_size == (1200, 800)


def test_a_tiff_is_read_upright_already() -> None:
    info = probe(sample_image(1200, 800, "TIFF", orientation=6))
    assert (info.width, info.height, info.orientation) == (800, 1200, 1)


def test_http_and_the_command_line_show_the_same_document() -> None:
    processor = memory_processor()
    task = processor.submit(sample_image(1200, 800, orientation=6), "t=fit:100x100,webp")
    processor.run_until_idle()
    done = processor.get(task.id)
    with TestClient(create_app(processor)) as client:
        shown = client.get(f"/status/{task.id}").json()
    operator = task_json(done, operator=True)
    # The same fields with the same values; HTTP adds URLs, the operator's view who and when.
    assert shown["source"].pop("url").startswith("http")
    for output in shown["outputs"]:
        assert output.pop("url").startswith("http")
    assert operator.pop("owner") is None
    assert operator.pop("available_at").endswith("Z")
    assert shown == operator
    assert shown["source"] == {
        "key": done.source_key,
        "format": "jpeg",
        "width": 1200,
        "height": 800,
        "orientation": 6,
        "display_width": 800,
        "display_height": 1200,
        "bytes": done.source.bytes,
    }
    assert (shown["outputs"][0]["format"], shown["outputs"][0]["height"]) == ("webp", 100)
    assert shown["pipeline"] == "t=fit:100x100,webp"


def test_server_side_messages_are_for_operators_only() -> None:
    processor = memory_processor()
    task = processor.submit(sample_image())
    failed = attrs.evolve(
        task,
        status=TaskStatus.FAILED,
        error=TaskError("storage_error", "s3://secret-bucket timed out"),
    )
    assert task_json(failed)["error"] == {
        "code": "storage_error",
        "message": "a server-side error interrupted processing",
    }
    assert task_json(failed, operator=True)["error"]["message"] == "s3://secret-bucket timed out"
