"""Webhooks end to end, with a real receiver on loopback and real backends: every final status
arrives signed (verified with the ``standardwebhooks`` package), survives a receiver that is down
for a while, is retried with growing delays, then dead, then sent again on request; hostile
callback URLs are refused at submit and at delivery."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook

from imageproc import (
    DeliveryStatus,
    InvalidInput,
    Processor,
    RetryPolicy,
    TaskStatus,
    UnsafeURL,
    Webhooks,
    task_json,
)
from imageproc.backends._memory import MemoryStorage
from imageproc.metrics import Metrics
from imageproc.testing import sample_image
from tests.support.databases import make_backend
from tests.support.processes import ServeProcess, environment, free_port
from tests.support.receiver import Arrival, Receiver

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]

IMAGE = sample_image(64, 48)
PIPELINE = "small=fit:32x32,png"
SECRET = Webhooks.new_secret()
#: Fast tries for tests: 0.2 s, 0.4 s, 0.8 s… at most 4 tries.
QUICK = RetryPolicy(max_attempts=4, backoff_base=0.2, backoff_max=2.0, jitter=0.0)


def hooks(**options: Any) -> Webhooks:
    return Webhooks(
        **{
            "secrets": [SECRET],
            "allow": ["127.0.0.1"],
            "schedule": QUICK,
            "timeout": 2.0,
            "connect_timeout": 1.0,
            "poll_interval": 0.2,
            **options,
        }
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_processor(request: pytest.FixtureRequest, kind: str, **options: Any) -> Processor:
    sql = make_backend(kind, request)
    processor = Processor(
        MemoryStorage(),
        sql,
        sql,
        isolation="thread",
        poll_interval=0.05,
        webhooks=options.pop("webhooks", None) or hooks(),
        **options,
    )
    request.addfinalizer(processor.close)
    return processor


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def verified(arrival: Arrival, secret: str = SECRET) -> Any:
    return Webhook(secret).verify(arrival.body, arrival.headers)


def wait_for_status(processor: Processor, status: DeliveryStatus, count: int = 1) -> list[Any]:
    for _ in range(1000):  # 10 s at most
        found = processor.deliveries(status)
        if len(found) >= count:
            return found
        threading.Event().wait(0.01)
    raise AssertionError(f"fewer than {count} {status} deliveries after 10 s")


def counted(metrics: Metrics, outcome: str) -> float:
    """The tries counted with ``outcome``, once the last one is (a try is counted just after it
    is recorded, so just after the delivery's status reads as it ended)."""
    counter = metrics.webhook_deliveries.labels(outcome)
    before = -1.0
    for _ in range(100):  # 1 s at most: until the count stops changing for 0.1 s
        value = float(counter._value.get())
        if value == before and value > 0:
            break
        before = value
        threading.Event().wait(0.1)
    return float(counter._value.get())


def test_every_final_status_arrives_signed_with_the_status_json(
    request: pytest.FixtureRequest, kind: str, receiver: Receiver
) -> None:
    processor = make_processor(request, kind)
    url = receiver.url("/hooks/imageproc?tenant=7")
    ok = processor.submit(IMAGE, PIPELINE, callback_url=url, metadata={"user": "42"})
    cancelled = processor.submit(IMAGE, PIPELINE, callback_url=url)
    processor.cancel(cancelled.id)
    broken = processor.submit(sample_image(65, 48), PIPELINE, callback_url=url)
    processor.storage.delete(broken.source_key)  # its original is gone: it fails
    plain = processor.submit(IMAGE, PIPELINE)  # no callback: no webhook
    processor.start(workers=2)
    for task_id in (ok.id, broken.id, plain.id):
        processor.wait(task_id, timeout=20)
    arrivals = receiver.wait_for(3)
    bodies = {verified(a)["id"]: (a, verified(a)) for a in arrivals}
    assert set(bodies) == {ok.id, cancelled.id, broken.id}
    arrival, body = bodies[ok.id]
    assert arrival.path == "/hooks/imageproc?tenant=7"
    assert arrival.headers["content-type"] == "application/json"
    assert arrival.headers["user-agent"].startswith("imageproc/")
    assert body == task_json(processor.get(ok.id))  # the status JSON, as recorded
    assert body["metadata"] == {"user": "42"}
    assert bodies[cancelled.id][1]["status"] == "cancelled"
    assert bodies[broken.id][1]["status"] in ("failed", "dead")
    delivered = wait_for_status(processor, DeliveryStatus.DELIVERED, 3)
    assert {d.id for d in delivered} == {a.headers["webhook-id"] for a in arrivals}
    assert len(receiver.got()) == 3


def test_several_secrets_sign_each_delivery_so_either_verifies(
    request: pytest.FixtureRequest, receiver: Receiver
) -> None:
    old, new = Webhooks.new_secret(), Webhooks.new_secret()
    processor = make_processor(request, "sqlite", webhooks=hooks(secrets=[old, new]))
    processor.submit(IMAGE, PIPELINE, callback_url=receiver.url())
    processor.start(workers=1)
    [arrival] = receiver.wait_for(1)
    assert len(arrival.headers["webhook-signature"].split(" ")) == 2
    assert verified(arrival, old)["status"] == "succeeded"
    assert verified(arrival, new)["status"] == "succeeded"
    with pytest.raises(Exception, match="No matching signature"):
        verified(arrival, Webhooks.new_secret())


def test_deliveries_wait_out_a_receiver_that_is_down(
    request: pytest.FixtureRequest, kind: str
) -> None:
    port = free_port()
    schedule = RetryPolicy(max_attempts=20, backoff_base=0.1, backoff_max=0.3, jitter=0.0)
    processor = make_processor(request, kind, webhooks=hooks(schedule=schedule))
    task = processor.submit(IMAGE, PIPELINE, callback_url=f"http://127.0.0.1:{port}/hook")
    processor.start(workers=1)
    processor.wait(task.id, timeout=20)
    for _ in range(1000):  # the first tries fail: nobody listens
        [pending] = processor.deliveries(DeliveryStatus.PENDING) or [None]
        if pending is not None and pending.attempts >= 2 and pending.last_error:
            break
        threading.Event().wait(0.01)
    assert pending is not None
    assert pending.last_error is not None
    assert pending.last_status_code is None
    receiver = Receiver(port)
    try:
        [arrival] = receiver.wait_for(1)
        assert verified(arrival)["id"] == task.id
        [done] = wait_for_status(processor, DeliveryStatus.DELIVERED)
        assert done.id == arrival.headers["webhook-id"] == pending.id
    finally:
        receiver.close()


def test_a_failing_receiver_gets_growing_delays_then_the_delivery_is_dead_until_resent(
    request: pytest.FixtureRequest, kind: str, receiver: Receiver
) -> None:
    receiver.answer = lambda _: (500, {})
    metrics = Metrics()
    processor = make_processor(request, kind, events=metrics)
    task = processor.submit(IMAGE, PIPELINE, callback_url=receiver.url())
    processor.start(workers=1)
    arrivals = receiver.wait_for(QUICK.max_attempts)
    [dead] = wait_for_status(processor, DeliveryStatus.DEAD)
    assert (dead.task_id, dead.attempts, dead.last_status_code) == (task.id, 4, 500)
    assert dead.last_error == "answered 500"
    gaps = [b.at - a.at for a, b in itertools.pairwise(arrivals)]
    # 0.2 s, 0.4 s, 0.8 s apart (no jitter): never sooner, and later only by the scheduling
    # of a loaded machine.
    for gap, planned in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert planned - 0.05 <= gap <= planned + 2.0, gaps
    assert gaps[2] > gaps[0]
    assert len({a.headers["webhook-id"] for a in arrivals}) == 1  # one id for every try
    threading.Event().wait(1.0)
    assert len(receiver.got()) == 4  # dead: no more tries
    assert counted(metrics, "retry") == 3
    assert counted(metrics, "dead") == 1
    receiver.answer = lambda _: (200, {})
    assert processor.redeliver([dead.id]) == 1
    again = receiver.wait_for(5)[4]
    assert again.headers["webhook-id"] == dead.id
    assert verified(again) == verified(arrivals[0])
    [done] = wait_for_status(processor, DeliveryStatus.DELIVERED)
    assert done.id == dead.id
    assert processor.deliveries(DeliveryStatus.DEAD) == []
    assert counted(metrics, "delivered") == 1


def test_a_redirect_is_not_followed(request: pytest.FixtureRequest, receiver: Receiver) -> None:
    elsewhere = Receiver()
    try:
        receiver.answer = lambda _: (307, {"location": elsewhere.url()})
        processor = make_processor(
            request, "sqlite", webhooks=hooks(schedule=RetryPolicy(max_attempts=1))
        )
        processor.submit(IMAGE, PIPELINE, callback_url=receiver.url())
        processor.start(workers=1)
        [dead] = wait_for_status(processor, DeliveryStatus.DEAD)
        assert dead.last_status_code == 307
        assert "redirects are not followed" in (dead.last_error or "")
        assert elsewhere.got() == []
    finally:
        elsewhere.close()


HOSTILE = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.7/hook", "private"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://localhost:8080/hook", "localhost"),
    ("file:///etc/passwd", "http"),
    ("gopher://example.com/", "http"),
]


@pytest.mark.parametrize(("url", "reason"), HOSTILE)
def test_hostile_callback_urls_are_refused_at_submit(
    request: pytest.FixtureRequest, url: str, reason: str
) -> None:
    processor = make_processor(request, "sqlite", webhooks=hooks(allow=()))
    with pytest.raises(UnsafeURL, match=reason):
        processor.submit(IMAGE, PIPELINE, callback_url=url)
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_a_host_name_that_resolves_to_a_private_address_is_refused(
    request: pytest.FixtureRequest,
) -> None:
    # This machine's own name, which /etc/hosts gives a loopback or private address here.
    name = socket.gethostname()
    found = {info[4][0] for info in socket.getaddrinfo(name, 8080, type=socket.SOCK_STREAM)}
    if all(ipaddress.ip_address(a.split("%")[0]).is_global for a in found):
        pytest.skip(f"{name} resolves to public addresses only here ({sorted(found)})")
    processor = make_processor(request, "sqlite", webhooks=hooks(allow=()))
    with pytest.raises(UnsafeURL, match="resolves to"):
        processor.submit(IMAGE, PIPELINE, callback_url=f"http://{name}:8080/hook")


def test_a_callback_url_is_checked_again_at_delivery(
    request: pytest.FixtureRequest, receiver: Receiver, tmp_path: Any
) -> None:
    # Accepted by a Processor that allowed loopback, sent by one that does not: refused there.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    submitter = Processor.from_urls(url, "memory://", webhooks=hooks(send=False))
    request.addfinalizer(submitter.close)
    task = submitter.submit(IMAGE, PIPELINE, callback_url=receiver.url())
    submitter.cancel(task.id)
    sender = Processor.from_urls(url, "memory://", webhooks=hooks(allow=()))
    request.addfinalizer(sender.close)
    sender.start_sending()
    [dead] = wait_for_status(sender, DeliveryStatus.DEAD)
    assert "loopback" in (dead.last_error or "")
    assert dead.attempts == 1  # refused for good: no tries left to make
    assert receiver.got() == []


def test_a_processor_without_webhooks_refuses_a_callback_url() -> None:
    with Processor.in_memory() as processor, pytest.raises(InvalidInput, match="no webhooks"):
        processor.submit(IMAGE, PIPELINE, callback_url="https://example.com/hook")


def test_an_owners_default_url_is_used_when_a_task_names_none(
    request: pytest.FixtureRequest, receiver: Receiver
) -> None:
    processor = make_processor(
        request, "sqlite", webhooks=hooks(default_urls={"alice": receiver.url("/alice")})
    )
    mine = processor.submit(IMAGE, PIPELINE, owner="alice")
    theirs = processor.submit(IMAGE, PIPELINE, owner="bob")
    assert (mine.callback_url, theirs.callback_url) == (receiver.url("/alice"), None)
    processor.start(workers=1)
    processor.wait(theirs.id, timeout=20)
    [arrival] = receiver.wait_for(1)
    assert arrival.path == "/alice"
    assert json.loads(arrival.body)["id"] == mine.id


@pytest.mark.slow
def test_a_worker_killed_while_sending_loses_no_webhook(
    request: pytest.FixtureRequest, kind: str, receiver: Receiver, tmp_path: Path
) -> None:
    database = str(make_backend(kind, request).engine.url.render_as_string(hide_password=False))
    storage = f"file://{tmp_path / 'images'}"
    submitter = Processor.from_urls(database, storage, webhooks=hooks(send=False))
    request.addfinalizer(submitter.close)
    release = threading.Event()

    def hold_the_first(arrival: Arrival) -> tuple[int, dict[str, str]]:
        release.wait(30)  # the worker is killed while this request is open
        return 204, {}

    receiver.answer = hold_the_first
    task = submitter.submit(IMAGE, PIPELINE, callback_url=receiver.url())
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.hookworker", database, storage, SECRET],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        [first] = receiver.wait_for(1, timeout=30)  # recorded, committed, being sent
        assert submitter.get(task.id).status == TaskStatus.SUCCEEDED
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
        worker.wait(10)
        if worker.stdout is not None:
            worker.stdout.close()
    receiver.answer = lambda _: (204, {})
    release.set()
    # Another process sends it once the dead sender's hold runs out (2 s, and as long again).
    sender = Processor.from_urls(database, storage, webhooks=hooks())
    request.addfinalizer(sender.close)
    sender.start_sending()
    arrivals = receiver.wait_for(2, timeout=30)
    assert {a.headers["webhook-id"] for a in arrivals} == {first.headers["webhook-id"]}
    assert {verified(a)["id"] for a in arrivals} == {task.id}
    [done] = wait_for_status(sender, DeliveryStatus.DELIVERED)
    assert done.id == first.headers["webhook-id"]


@pytest.mark.slow
def test_imageproc_serve_sends_the_webhook_of_an_upload(tmp_path: Path, receiver: Receiver) -> None:
    # The product as deployed: settings from the environment, a form field, the server's own
    # workers and sender.
    port = free_port()
    env = environment(
        IMAGEPROC_DATABASE_URL=f"sqlite:///{tmp_path / 'tasks.db'}",
        IMAGEPROC_STORAGE_URL=f"file://{tmp_path / 'store'}",
        IMAGEPROC_PORT=str(port),
        IMAGEPROC_WORKERS="1",
        IMAGEPROC_WEBHOOK_SECRETS=SECRET,
        IMAGEPROC_WEBHOOK_ALLOW="127.0.0.1",
    )
    server = ServeProcess(tmp_path, port, env)
    try:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/upload",
            data={"pipeline": "small=fit:32x32,png", "callback_url": receiver.url("/from-serve")},
            files={"image": ("a.jpg", IMAGE, "image/jpeg")},
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        task_id = answer.json()["id"]
        [arrival] = receiver.wait_for(1, timeout=30)
    finally:
        server.stop()
    assert arrival.path == "/from-serve"
    body_sent = verified(arrival)
    assert (body_sent["id"], body_sent["status"]) == (task_id, "succeeded")
    assert "Traceback" not in server.log()


def test_a_sender_repairs_a_final_status_recorded_without_its_delivery(
    request: pytest.FixtureRequest, kind: str, receiver: Receiver
) -> None:
    # The gap PostgreSQL's burial can leave (a claimer that died between its two
    # transactions), made by hand: the sender's first repair finds it and sends it.
    processor = make_processor(request, kind, webhooks=hooks(send=False))
    task = processor.submit(IMAGE, PIPELINE, callback_url=receiver.url())
    finished = processor.clock() - timedelta(minutes=2)
    sql = processor.repository
    with sql.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            sa.text(
                "UPDATE imageproc_tasks SET status = 'dead', finished_at = :at, updated_at = :at"
                " WHERE id = :id"
            ),
            {"at": finished.replace(tzinfo=None) if kind == "sqlite" else finished, "id": task.id},
        )
    sender = Processor(MemoryStorage(), sql, sql, webhooks=hooks())  # type: ignore[arg-type]
    request.addfinalizer(sender.stop_sending)
    sender.start_sending()
    [arrival] = receiver.wait_for(1, timeout=30)
    assert (verified(arrival)["id"], verified(arrival)["status"]) == (task.id, "dead")
