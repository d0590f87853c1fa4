"""The completion push (Completions) and the wait that stands on it (wait_for_end)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from imageproc import Processor, TaskStatus, WaitTimeout
from imageproc._clock import utcnow
from imageproc._task import Task, TaskError
from imageproc.delivery import _waiting as waiting
from imageproc.delivery._completions import Completions
from imageproc.delivery._waiting import wait_for_end
from imageproc.testing import sample_image
from tests.support.doubles import new_task, wait_until

# Every background thread a test starts is joined within this many seconds.
JOIN = 5.0


def succeeded(task: Task) -> Task:
    now = utcnow()
    return task.claim(now).succeed((), now)


def failed(task: Task) -> Task:
    now = utcnow()
    return task.claim(now).fail(TaskError("invalid_image", "not an image"), now)


class Recorder:
    """A completion callback that remembers what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Task | None]] = []

    def __call__(self, task_id: str, task: Task | None) -> None:
        self.calls.append((task_id, task))

    def statuses(self) -> list[TaskStatus | None]:
        return [task.status if task else None for _, task in self.calls]


class Reads:
    """A fake ``get``: the tasks it returns on each call in turn (the last one from then on)."""

    def __init__(self, *tasks: Task, on_read: Callable[[int], None] | None = None) -> None:
        self.tasks = tasks
        self.count = 0
        self.on_read = on_read

    def __call__(self, task_id: str) -> Task:
        assert task_id == self.tasks[0].id
        self.count += 1
        if self.on_read is not None:
            self.on_read(self.count)
        return self.tasks[min(self.count, len(self.tasks)) - 1]


@contextmanager
def in_thread(target: Callable[[], None]) -> Iterator[None]:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(JOIN)
        assert not thread.is_alive()


# -- Completions --------------------------------------------------------------------------------


def test_a_publish_reaches_the_subscribers_of_that_task_only() -> None:
    completions = Completions()
    a, b = new_task(), new_task()
    first, second, other = Recorder(), Recorder(), Recorder()
    done = succeeded(a)
    with (
        completions.subscribe(a.id, first),
        completions.subscribe(a.id, second),
        completions.subscribe(b.id, other),
    ):
        completions.publish([(a.id, done)])
    assert first.calls == second.calls == [(a.id, done)]
    assert other.calls == []


def test_leaving_the_with_block_unsubscribes() -> None:
    completions = Completions()
    task, callback = new_task(), Recorder()
    with completions.subscribe(task.id, callback):
        assert len(completions) == 1
    assert len(completions) == 0
    completions.publish([(task.id, None)])
    assert callback.calls == []


def test_an_error_in_the_with_block_unsubscribes_too() -> None:
    completions = Completions()
    task = new_task()
    with pytest.raises(KeyError), completions.subscribe(task.id, Recorder()):
        raise KeyError("the waiter failed")
    assert len(completions) == 0


def test_one_subscriber_leaving_keeps_the_others_of_its_task() -> None:
    completions = Completions()
    task, staying = new_task(), Recorder()
    with completions.subscribe(task.id, staying):
        with completions.subscribe(task.id, Recorder()):
            pass
        assert len(completions) == 1
        completions.publish([(task.id, None)])
    assert staying.calls == [(task.id, None)]


def test_publish_tasks_publishes_only_final_tasks() -> None:
    completions = Completions()
    queued, processing, done, broken = new_task(), new_task(), new_task(), new_task()
    callbacks = {task.id: Recorder() for task in (queued, processing, done, broken)}
    with (
        completions.subscribe(queued.id, callbacks[queued.id]),
        completions.subscribe(processing.id, callbacks[processing.id]),
        completions.subscribe(done.id, callbacks[done.id]),
        completions.subscribe(broken.id, callbacks[broken.id]),
    ):
        completions.publish_tasks(
            [queued, processing.claim(utcnow()), succeeded(done), failed(broken)]
        )
    assert callbacks[queued.id].statuses() == callbacks[processing.id].statuses() == []
    assert callbacks[done.id].statuses() == [TaskStatus.SUCCEEDED]
    assert callbacks[broken.id].statuses() == [TaskStatus.FAILED]


def test_publish_all_wakes_every_subscriber_with_no_task() -> None:
    completions = Completions()
    a, b = new_task(), new_task()
    on_a, on_b = Recorder(), Recorder()
    with completions.subscribe(a.id, on_a), completions.subscribe(b.id, on_b):
        completions.publish_all()
    assert on_a.calls == [(a.id, None)]
    assert on_b.calls == [(b.id, None)]


def test_a_raising_callback_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    completions = Completions()
    task, after = new_task(), Recorder()

    def broken(task_id: str, task: Task | None) -> None:
        raise RuntimeError("subscriber bug")

    with (
        caplog.at_level(logging.ERROR, logger="imageproc.completions"),
        completions.subscribe(task.id, broken),
        completions.subscribe(task.id, after),
    ):
        completions.publish([(task.id, None)])  # the publisher (a worker) must not see it
        completions.publish_all()
    assert after.calls == [(task.id, None), (task.id, None)]
    logged = [r for r in caplog.records if r.name == "imageproc.completions"]
    assert len(logged) == 2
    assert all(task.id in r.getMessage() for r in logged)
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in logged)


def test_activate_runs_with_the_subscribe_timeout_before_the_subscription() -> None:
    seen: list[tuple[float, int]] = []
    completions = Completions(activate=lambda timeout: seen.append((timeout, len(completions))))
    with completions.subscribe(new_task().id, Recorder(), timeout=1.5):
        pass
    with completions.subscribe(new_task().id, Recorder()):
        pass
    # Listening starts before the subscription counts; the default timeout is 5 s.
    assert seen == [(1.5, 0), (5.0, 0)]


def test_activate_can_be_called_alone_and_skipped_by_subscribe() -> None:
    # An event loop activates once in a thread, then subscribes without blocking.
    seen: list[float] = []
    completions = Completions(activate=seen.append)
    completions.activate(2.0)
    task_id, recorder = new_task().id, Recorder()
    with completions.subscribe(task_id, recorder, activate=False):
        completions.publish([(task_id, None)])
    assert seen == [2.0]
    assert recorder.calls == [(task_id, None)]
    Completions().activate()  # nothing to activate: a no-op


# -- wait_for_end -------------------------------------------------------------------------------


def test_a_task_already_final_is_returned_after_one_read() -> None:
    done = succeeded(new_task())
    get = Reads(done)
    assert wait_for_end(get, done.id, timeout=5, completions=Completions()) is done
    assert get.count == 1


def test_the_waiter_reads_only_while_subscribed() -> None:
    # Subscribed before each read, so an end landing between a read and the wait is not missed.
    completions = Completions(poll_interval=0.001)
    task = new_task()
    subscribed: list[int] = []
    get = Reads(task, succeeded(task), on_read=lambda _: subscribed.append(len(completions)))
    wait_for_end(get, task.id, timeout=JOIN, completions=completions)
    assert subscribed == [1, 1]
    assert len(completions) == 0


def test_a_published_task_is_returned_without_reading_it_again() -> None:
    completions = Completions()
    task = new_task()
    done = succeeded(task)
    read = threading.Event()
    get = Reads(task, on_read=lambda _: read.set())

    def finish() -> None:
        assert read.wait(JOIN)
        completions.publish([(task.id, done)])

    with in_thread(finish):
        assert wait_for_end(get, task.id, timeout=JOIN, completions=completions) is done
    assert get.count == 1


def test_a_published_none_makes_the_waiter_read_again() -> None:
    completions = Completions()
    task = new_task()
    done = succeeded(task)
    read = threading.Event()
    get = Reads(task, done, on_read=lambda _: read.set())

    def finish() -> None:
        assert read.wait(JOIN)
        completions.publish([(task.id, None)])  # another process ended it: only the id is known

    started = time.monotonic()
    with in_thread(finish):
        assert wait_for_end(get, task.id, timeout=JOIN, completions=completions) is done
    assert get.count == 2
    assert time.monotonic() - started < 1  # woken by the news, not by the timeout


def test_a_wait_times_out_with_wait_timeout() -> None:
    completions = Completions()
    task = new_task()
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=task.id) as raised:
        wait_for_end(Reads(task), task.id, timeout=0.05, completions=completions)
    assert 0.05 <= time.monotonic() - started < 1
    assert isinstance(raised.value, TimeoutError)
    assert len(completions) == 0


def test_a_poll_interval_rereads_without_any_publish() -> None:
    task = new_task()
    done = succeeded(task)
    get = Reads(task, task, done)
    started = time.monotonic()
    got = wait_for_end(get, task.id, timeout=JOIN, completions=Completions(poll_interval=0.01))
    assert got is done
    assert get.count == 3
    assert time.monotonic() - started < 1


class FakeTime:
    """Stands in for the ``time`` module in ``waiting``: sleeping moves the clock on at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(waiting, "time", fake)
    return fake


def test_without_completions_the_waiter_polls_until_final(fake_time: FakeTime) -> None:
    task = new_task()
    done = succeeded(task)
    get = Reads(task, task, done)
    assert wait_for_end(get, task.id, timeout=5, completions=None) is done
    assert get.count == 3
    assert len(fake_time.sleeps) == 2


def test_polling_backs_off_to_a_cap_and_stops_at_the_timeout(fake_time: FakeTime) -> None:
    task = new_task()
    with pytest.raises(WaitTimeout):
        wait_for_end(Reads(task), task.id, timeout=1.0, completions=None)
    sleeps = fake_time.sleeps
    assert sleeps[:8] == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25])
    assert max(sleeps) == pytest.approx(0.25)
    # The last pause is cut to what was left, so the wait ends at its deadline, not past it.
    assert sum(sleeps) == pytest.approx(1.0)


# -- end to end, on the memory backend ----------------------------------------------------------


def test_a_worker_finishing_the_task_wakes_the_waiter(processor: Processor) -> None:
    task = processor.submit(sample_image(64, 48), "fit:32x32,png")
    processor.start(workers=1)
    assert processor.wait(task.id, timeout=JOIN).status == TaskStatus.SUCCEEDED


def test_a_cancel_from_another_thread_wakes_the_waiter_without_workers(
    processor: Processor,
) -> None:
    task = processor.submit(sample_image(64, 48), "fit:32x32,png")
    completions: Completions = processor.repository.completions  # type: ignore[attr-defined]

    def cancel_once_waiting() -> None:
        wait_until(lambda: len(completions) == 1, timeout=JOIN, interval=0.001)
        processor.cancel(task.id)

    started = time.monotonic()
    with in_thread(cancel_once_waiting):
        ended = processor.wait(task.id, timeout=JOIN)
    assert ended.status == TaskStatus.CANCELLED
    assert time.monotonic() - started < 1
