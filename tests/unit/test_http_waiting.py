"""Following a task over HTTP without polling: the long-poll ``GET /status/{id}?wait=N`` and the
server-sent events of ``GET /status/{id}/events``, through Starlette's test client on the
in-memory processor; owners and API keys as for ``GET /status``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from imageproc import BackendUnavailable, Processor
from imageproc.http import _tasks
from imageproc.http._app import create_app
from imageproc.testing import sample_image

pytestmark = pytest.mark.timeout(60)

JPEG = sample_image(64, 48)
ALICE, BOB = "alice-key-0123456789-AbCdEfGhIj", "bob-key-0123456789-KlMnOpQrSt"
KEYS = {"alice": ALICE, "bob": BOB}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(processor: Processor) -> Iterator[TestClient]:
    with TestClient(create_app(processor, api_keys=KEYS)) as test_client:
        yield test_client


def upload(client: TestClient, key: str = ALICE) -> str:
    response = client.post(
        "/upload",
        files={"image": ("cat.jpg", JPEG, "image/jpeg")},
        data={"pipeline": "fit:32x32,png"},
        headers=auth(key),
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def timed_get(client: TestClient, path: str, key: str = ALICE) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.get(path, headers=auth(key))
    return response, time.monotonic() - started


def later(seconds: float, action: Any) -> threading.Thread:
    """Run ``action`` in a thread after ``seconds`` (joined by the caller)."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- GET /status/{id}?wait=N ------------------------------------------------------------------


def test_wait_answers_a_final_task_at_once(client: TestClient, processor: Processor) -> None:
    task_id = upload(client)
    processor.run_until_idle()
    response, elapsed = timed_get(client, f"/status/{task_id}?wait=30")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    assert response.headers["cache-control"] == "no-store"
    assert elapsed < 2


def test_wait_answers_as_soon_as_a_worker_finishes_the_task(
    client: TestClient, processor: Processor
) -> None:
    task_id = upload(client)
    worker = later(0.5, processor.run_until_idle)
    response, elapsed = timed_get(client, f"/status/{task_id}?wait=30")
    worker.join(5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["outputs"][0]["url"].startswith("http://testserver/image/outputs/")
    # Woken by the end itself: well under the 30 s it could have waited.
    assert 0.4 < elapsed < 5


def test_wait_answers_the_current_status_after_the_wait(
    client: TestClient, processor: Processor
) -> None:
    task_id = upload(client)
    response, elapsed = timed_get(client, f"/status/{task_id}?wait=1")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"
    assert 0.9 < elapsed < 5


def test_wait_of_zero_is_a_plain_read(client: TestClient) -> None:
    task_id = upload(client)
    response, elapsed = timed_get(client, f"/status/{task_id}?wait=0")
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert elapsed < 2


@pytest.mark.parametrize(
    "query",
    ["wait=-1", "wait=61", "wait=1.5", "wait=", "wait=abc", "wait=%EF%BC%91", "wait=1&wait=2"],
)
def test_a_bad_wait_is_422(client: TestClient, query: str) -> None:
    task_id = upload(client)
    response = client.get(f"/status/{task_id}?{query}", headers=auth(ALICE))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_wait"
    assert "0 to 60" in error["message"]


def test_wait_on_another_owners_task_is_404_at_once(
    client: TestClient, processor: Processor
) -> None:
    task_id = upload(client, ALICE)
    response, elapsed = timed_get(client, f"/status/{task_id}?wait=10", key=BOB)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "task_not_found"
    assert elapsed < 2
    assert client.get(f"/status/{task_id}?wait=1").status_code == 401
    response, elapsed = timed_get(client, "/status/no-such-task?wait=10")
    assert (response.status_code, elapsed < 2) == (404, True)


def test_a_stopping_server_answers_long_polls_at_once(client: TestClient) -> None:
    task_id = upload(client)
    answer: list[Any] = []
    waiter = threading.Thread(
        target=lambda: answer.append(timed_get(client, f"/status/{task_id}?wait=30"))
    )
    waiter.start()
    time.sleep(0.5)
    client.app.state.imageproc.stop_waiting()  # type: ignore[attr-defined]
    waiter.join(10)
    ((response, elapsed),) = answer
    assert response.json()["status"] == "queued"
    assert elapsed < 5
    # And any that comes later is a plain read.
    response, elapsed = timed_get(client, f"/status/{task_id}?wait=30")
    assert (response.json()["status"], elapsed < 2) == ("queued", True)


def test_many_waits_on_one_task_are_all_answered(client: TestClient, processor: Processor) -> None:
    task_id = upload(client)
    answers: list[str] = []

    def wait() -> None:
        answers.append(
            client.get(f"/status/{task_id}?wait=20", headers=auth(ALICE)).json()["status"]
        )

    waiters = [threading.Thread(target=wait) for _ in range(20)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.5)
    started = time.monotonic()
    processor.run_until_idle()
    for waiter in waiters:
        waiter.join(10)
    assert answers == ["succeeded"] * 20
    assert time.monotonic() - started < 5
    assert len(processor.repository.completions) == 0  # type: ignore[attr-defined]


# -- GET /status/{id}/events ------------------------------------------------------------------


def read_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """The events of a stream as fields (``comment`` for a comment), one dict per event."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
            continue
        field, _, value = line.partition(":")
        event[field or "comment"] = value.removeprefix(" ")
    if event:
        yield event


@pytest.fixture
def fast_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tasks, "STREAM_POLL", 0.05)


@pytest.mark.usefixtures("fast_stream")
def test_the_stream_follows_the_task_to_its_end(client: TestClient, processor: Processor) -> None:
    task_id = upload(client)
    seen: list[dict[str, str]] = []
    with client.stream("GET", f"/status/{task_id}/events", headers=auth(ALICE)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        events = read_events(response.iter_lines())
        seen.append(next(events))  # the current status first
        (lease,) = processor.queue.claim("test", lease_seconds=30)
        seen.append(next(events))  # processing, found by reading
        processor.process(lease)
        seen.extend(events)  # succeeded (pushed), then the stream ends
    assert [event["event"] for event in seen] == ["status"] * 3
    assert [event["id"] for event in seen] == ["1", "2", "3"]
    documents = [json.loads(event["data"]) for event in seen]
    assert [document["status"] for document in documents] == ["queued", "processing", "succeeded"]
    # The very document GET /status answers.
    assert documents[-1] == client.get(f"/status/{task_id}", headers=auth(ALICE)).json()


def test_the_stream_of_a_final_task_is_one_event(client: TestClient, processor: Processor) -> None:
    task_id = upload(client)
    processor.run_until_idle()
    with client.stream("GET", f"/status/{task_id}/events", headers=auth(ALICE)) as response:
        events = list(read_events(response.iter_lines()))
    assert len(events) == 1
    assert json.loads(events[0]["data"])["status"] == "succeeded"


@pytest.mark.usefixtures("fast_stream")
def test_the_stream_ends_with_a_comment_at_its_time_limit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_tasks, "STREAM_LIMIT", 0.3)
    task_id = upload(client)
    started = time.monotonic()
    with client.stream("GET", f"/status/{task_id}/events", headers=auth(ALICE)) as response:
        events = list(read_events(response.iter_lines()))
    assert time.monotonic() - started < 5
    assert json.loads(events[0]["data"])["status"] == "queued"
    assert "reconnect" in events[-1]["comment"]
    assert len(events) == 2


def test_the_stream_respects_owners_and_keys(client: TestClient) -> None:
    task_id = upload(client, ALICE)
    response = client.get(f"/status/{task_id}/events", headers=auth(BOB))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "task_not_found"
    response = client.get(f"/status/{task_id}/events")
    assert response.status_code == 401
    assert client.get("/status/nothing/events", headers=auth(ALICE)).status_code == 404


def test_the_stream_is_open_without_keys(processor: Processor) -> None:
    with TestClient(create_app(processor)) as client:
        response = client.post(
            "/upload", files={"image": ("cat.jpg", JPEG, "image/jpeg")}, data={"pipeline": "png"}
        )
        task_id = response.json()["id"]
        processor.run_until_idle()
        with client.stream("GET", f"/status/{task_id}/events") as stream:
            events = list(read_events(stream.iter_lines()))
    assert [json.loads(event["data"])["status"] for event in events] == ["succeeded"]


@pytest.mark.usefixtures("fast_stream")
def test_a_stream_that_cannot_read_its_task_ends_with_an_error_event(
    client: TestClient, processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = upload(client)
    reads = 0
    real_get = processor.get

    def flaky_get(task_id: str) -> Any:
        nonlocal reads
        reads += 1
        if reads > 2:  # the check before the stream, the first event; then the database goes
            raise BackendUnavailable("connection refused to db.internal:5432")
        return real_get(task_id)

    monkeypatch.setattr(processor, "get", flaky_get)
    with client.stream("GET", f"/status/{task_id}/events", headers=auth(ALICE)) as response:
        events = list(read_events(response.iter_lines()))
    assert [event["event"] for event in events] == ["status", "error"]
    error = json.loads(events[-1]["data"])["error"]
    assert error["code"] == "backend_unavailable"
    assert "db.internal" not in error["message"]  # as an error answer would say it
    assert events[-1]["id"] == "2"


def test_head_of_a_stream_answers_its_headers_without_streaming(client: TestClient) -> None:
    task_id = upload(client)
    started = time.monotonic()
    response = client.head(f"/status/{task_id}/events", headers=auth(ALICE))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""
    assert time.monotonic() - started < 2


# -- one sweep for every long-poll ------------------------------------------------------------


def test_many_long_polls_on_sqlite_share_one_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On SQLite an end recorded by another process is only found by reading: all the open
    # long-polls of the app are read by one query every poll_interval, not one read each.
    processor = Processor.from_urls(
        f"sqlite:///{tmp_path / 'tasks.db'}", "memory://", isolation="thread"
    )
    repository: Any = processor.repository
    interval = repository.completions.poll_interval
    assert interval is not None
    sweeps: list[int] = []
    gets: list[str] = []
    ended_among, get = repository.ended_among, repository.get

    def counted_ended_among(task_ids: Any) -> Any:
        sweeps.append(len(task_ids))
        return ended_among(task_ids)

    def counted_get(task_id: str) -> Any:
        gets.append(task_id)
        return get(task_id)

    monkeypatch.setattr(repository, "ended_among", counted_ended_among)
    monkeypatch.setattr(repository, "get", counted_get)
    polls = 50
    try:
        with TestClient(create_app(processor, api_keys=KEYS)) as client:
            task_ids = [upload(client) for _ in range(10)]
            answers: list[str] = []

            def wait(task_id: str) -> None:
                response = client.get(f"/status/{task_id}?wait=3", headers=auth(ALICE))
                answers.append(response.json()["status"])

            threads = [
                threading.Thread(target=wait, args=(task_ids[n % len(task_ids)],))
                for n in range(polls)
            ]
            for thread in threads:
                thread.start()
            waiters = client.app.state.imageproc.waiters  # type: ignore[attr-defined]
            deadline = time.monotonic() + 2
            while len(waiters) < polls and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(waiters) == polls
            assert waiters.sweeping() == 1
            sweeps.clear()
            gets.clear()
            time.sleep(1.0)
            swept, read = list(sweeps), list(gets)
            for thread in threads:
                thread.join(10)
    finally:
        processor.close()
    assert answers == ["queued"] * polls
    # About one query a poll_interval for all of them (every task id in it), and no read of
    # its own by any long-poll: not 50 reads a poll_interval.
    assert 0.5 / interval <= len(swept) <= 1.5 / interval, swept
    assert all(count == len(task_ids) for count in swept), swept
    assert read == []
