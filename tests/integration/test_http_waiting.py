"""Long-polls and status streams against the real ``imageproc serve`` (uvicorn, embedded workers,
SQLite and a local folder), with its deadlines on headers, bodies and idle connections set to
one second: a long response is not an idle connection, and none of them may cut it.

Covers a long-poll answered when a worker ends the task, one answered with the queued status
after its wait, a server-sent event stream read with a plain HTTP client until the server closes
it, 200 long-polls at once that hold no thread each, and a stop that answers an open long-poll
and ends an open stream at once. On PostgreSQL, a long-poll woken through LISTEN/NOTIFY by an end
that another backend recorded.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageproc.testing import sample_image
from tests.support.processes import ServeProcess, environment, free_port

pytest.importorskip("sse_starlette", reason="the http extra is not installed")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KEY = "alice-key-0123456789-AbCdEfGhIj"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Every deadline of `imageproc serve` at its shortest: each long response below outlasts them.
DEADLINE = 1


class Serve(ServeProcess):
    """``imageproc serve`` with two worker threads in ``folder``, its log in a file."""

    def __init__(self, folder: Path, **settings: str) -> None:
        port = free_port()
        env = environment(
            IMAGEPROC_DATABASE_URL=f"sqlite:///{folder / 'tasks.db'}",
            IMAGEPROC_STORAGE_URL=f"file://{folder / 'store'}",
            IMAGEPROC_PORT=str(port),
            IMAGEPROC_API_KEYS=f"alice:{KEY}",
            IMAGEPROC_SIGNING_KEYS="test-signing-key-0123456789-AbCdEf",
            IMAGEPROC_WORKERS="2",
            IMAGEPROC_HEADER_TIMEOUT=str(DEADLINE),
            IMAGEPROC_KEEP_ALIVE_TIMEOUT=str(DEADLINE),
            IMAGEPROC_BODY_TIMEOUT=str(DEADLINE),
            **{f"IMAGEPROC_{name.upper()}": value for name, value in settings.items()},
        )
        super().__init__(folder, port, env)

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str, timeout: float = 30) -> tuple[int, Any]:
        connection = self.connection(timeout)
        try:
            connection.request("GET", path, headers=AUTH)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def upload(self, not_before: int) -> str:
        """A task no worker takes for ``not_before`` seconds."""
        connection = self.connection()
        try:
            connection.request(
                "POST",
                f"/upload?pipeline=fit:32x32,png&not_before={not_before}",
                body=sample_image(64, 48),
                headers={**AUTH, "Content-Type": "image/jpeg"},
            )
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 202, body
            task_id: str = body["id"]
            return task_id
        finally:
            connection.close()

    def threads(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads line")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Serve]:
    started = Serve(tmp_path)
    yield started
    started.stop()


def read_events(response: http.client.HTTPResponse) -> Iterator[dict[str, str]]:
    """The events of a stream, one dict of fields per event, until the server closes it."""
    event: dict[str, str] = {}
    while line := response.readline():
        text = line.decode().rstrip("\r\n")
        if not text:
            if event:
                yield event
            event = {}
            continue
        field, _, value = text.partition(":")
        event[field or "comment"] = value.removeprefix(" ")
    if event:
        yield event


def test_a_long_poll_is_answered_when_a_worker_ends_the_task(server: Serve) -> None:
    task_id = server.upload(not_before=3)
    started = time.monotonic()
    status, body = server.get(f"/status/{task_id}?wait=30")
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert body["status"] == "succeeded"
    # Held past every deadline of the server, and answered once the work was done, long before
    # the 30 s it could have waited.
    assert 2 < elapsed < 15


def test_a_long_poll_answers_the_status_after_its_wait_and_the_connection_lives_on(
    server: Serve,
) -> None:
    task_id = server.upload(not_before=300)
    connection = server.connection()
    try:
        started = time.monotonic()
        connection.request("GET", f"/status/{task_id}?wait=3", headers=AUTH)
        response = connection.getresponse()
        body = json.loads(response.read())
        assert (response.status, body["status"]) == (200, "queued")
        assert 2.9 < time.monotonic() - started < 10
        # The same kept-alive connection serves the next request.
        connection.request("GET", f"/status/{task_id}", headers=AUTH)
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_the_event_stream_follows_the_task_until_the_server_closes_it(server: Serve) -> None:
    task_id = server.upload(not_before=3)
    connection = server.connection()
    try:
        started = time.monotonic()
        connection.request("GET", f"/status/{task_id}/events", headers=AUTH)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/event-stream")
        events = list(read_events(response))  # until the server ends the stream
        elapsed = time.monotonic() - started
    finally:
        connection.close()
    statuses = [json.loads(event["data"])["status"] for event in events]
    assert statuses[0] == "queued"
    assert statuses[-1] == "succeeded"
    assert set(statuses) <= {"queued", "processing", "succeeded"}
    assert all(event["event"] == "status" for event in events)
    assert [int(event["id"]) for event in events] == list(range(1, len(events) + 1))
    assert 2 < elapsed < 15


def test_many_long_polls_hold_no_thread_each(server: Serve) -> None:
    task_id = server.upload(not_before=300)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def long_poll(wait: int) -> None:
        status, body = server.get(f"/status/{task_id}?wait={wait}", timeout=60)
        with lock:
            answers.append((status, body.get("status", body)))

    def at_once(count: int, wait: int, measure_after: float) -> tuple[int, float]:
        """``count`` long-polls at once: the server's threads while they wait, and the time
        until the last is answered."""
        answers.clear()
        started = time.monotonic()
        polls = [threading.Thread(target=long_poll, args=(wait,)) for _ in range(count)]
        for thread in polls:
            thread.start()
        time.sleep(measure_after)
        threads = server.threads()
        for thread in polls:
            thread.join(60)
        assert answers == [(200, "queued")] * count
        return threads, time.monotonic() - started

    at_first = server.threads()
    # A first round grows the thread pool that the reads of the task run in (at most 40
    # threads, each read brief), so the second shows what the waiting itself adds.
    warm, _ = at_once(200, wait=1, measure_after=0.5)
    during, elapsed = at_once(200, wait=4, measure_after=2.5)
    # 200 waits at once, not one after another in a pool of threads...
    assert elapsed < 12
    # ...and not a thread each: the pool the reads ran in, and nothing more while they wait.
    assert during - at_first < 60, (at_first, warm, during)
    assert during - warm < 15, (at_first, warm, during)


def test_a_stop_ends_an_open_stream(server: Serve) -> None:
    task_id = server.upload(not_before=300)
    connection = server.connection()
    try:
        connection.request("GET", f"/status/{task_id}/events", headers=AUTH)
        response = connection.getresponse()
        events = read_events(response)
        assert json.loads(next(events)["data"])["status"] == "queued"
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        rest = list(events)  # ends when the server closes the stream
        assert all(event.get("event") != "status" for event in rest)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        connection.close()


def test_a_stop_answers_an_open_long_poll_at_once(server: Serve) -> None:
    task_id = server.upload(not_before=300)
    answer: list[tuple[int, Any]] = []
    poll = threading.Thread(
        target=lambda: answer.append(server.get(f"/status/{task_id}?wait=60", timeout=60))
    )
    poll.start()
    time.sleep(1)  # it waits now
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    poll.join(30)
    # Answered with the task as it is, instead of holding the stop for up to a minute.
    assert answer == [(200, answer[0][1])]
    assert answer[0][1]["status"] == "queued"
    assert server.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 15


@pytest.mark.postgres
def test_a_long_poll_is_woken_by_another_process_through_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    """The app's processor records nothing itself: the end comes from another backend (another
    process, as far as the database can tell) through LISTEN/NOTIFY, and wakes the long-poll
    long before the waiter's own safety reads would have found it."""
    from starlette.testclient import TestClient

    from imageproc import Processor
    from imageproc.http import create_app
    from imageproc.testing import FAST_OPTIONS

    storage = f"file://{tmp_path / 'store'}"
    with (
        Processor.from_urls(postgres_url, storage, **FAST_OPTIONS) as serving,
        Processor.from_urls(postgres_url, storage, **FAST_OPTIONS) as working,
        TestClient(create_app(serving)) as client,
    ):
        task = serving.submit(sample_image(64, 48), "fit:32x32,png")
        # Listening already (the first LISTEN), so the end below is pushed, not polled for.
        assert client.get(f"/status/{task.id}?wait=1").json()["status"] == "queued"
        timer = threading.Timer(1.0, working.run_until_idle)
        timer.start()
        try:
            started = time.monotonic()
            response = client.get(f"/status/{task.id}?wait=30")
            elapsed = time.monotonic() - started
        finally:
            timer.join(10)
        assert response.json()["status"] == "succeeded"
        assert 0.9 < elapsed < 4


def test_an_abandoned_long_poll_gives_its_connection_back(tmp_path: Path) -> None:
    # uvicorn counts a request until the app answers it, connection closed or not: a long-poll
    # still waiting for a client that has gone would hold its place for the rest of its wait.
    server = Serve(tmp_path, max_connections="3")
    try:
        task_id = server.upload(not_before=300)
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(
                    f"GET /status/{task_id}?wait=60 HTTP/1.1\r\nHost: test\r\n"
                    f"Authorization: Bearer {KEY}\r\n\r\n".encode()
                )
                time.sleep(0.3)  # waiting now; then the client goes
        time.sleep(1)
        assert server.get(f"/status/{task_id}")[0] == 200
    finally:
        server.stop()
