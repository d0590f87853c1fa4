"""Tests of ``Task``: the status lifecycle and its legal transitions."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from imageproc import IllegalTransition, Output, SourceInfo, Task, TaskError, TaskStatus
from imageproc._task import TRANSITIONS, new_task_id
from imageproc.pipeline._pipeline import DEFAULT_PIPELINE

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(seconds=5)
ERROR = TaskError("storage_error", "flaky")
S = TaskStatus

# The lifecycle from DESIGN.md, written out independently of the table in task.py.
LEGAL = {
    (S.QUEUED, S.PROCESSING),
    (S.PROCESSING, S.SUCCEEDED),
    (S.PROCESSING, S.FAILED),
    (S.PROCESSING, S.DEAD),
    (S.PROCESSING, S.QUEUED),
    (S.QUEUED, S.CANCELLED),
    (S.PROCESSING, S.CANCELLED),
    (S.FAILED, S.QUEUED),
    (S.DEAD, S.QUEUED),
}

# Each method and the statuses it may start from.
MOVES: dict[str, tuple[set[TaskStatus], TaskStatus, Callable[[Task], Task]]] = {
    "claim": ({S.QUEUED}, S.PROCESSING, lambda t: t.claim(LATER)),
    "succeed": ({S.PROCESSING}, S.SUCCEEDED, lambda t: t.succeed((), LATER)),
    "fail": ({S.PROCESSING}, S.FAILED, lambda t: t.fail(ERROR, LATER)),
    "die": ({S.PROCESSING}, S.DEAD, lambda t: t.die(ERROR, LATER)),
    "requeue": ({S.PROCESSING}, S.QUEUED, lambda t: t.requeue(LATER, delay=timedelta(1))),
    "cancel": ({S.QUEUED, S.PROCESSING}, S.CANCELLED, lambda t: t.cancel(LATER)),
    "retry": ({S.FAILED, S.DEAD}, S.QUEUED, lambda t: t.retry(LATER)),
    "unclaim": ({S.PROCESSING}, S.QUEUED, lambda t: t.unclaim(LATER)),
}


def make_task(status: TaskStatus = S.QUEUED, **changes: object) -> Task:
    task = Task.new(
        pipeline=DEFAULT_PIPELINE,
        source_key="originals/ab/abc.jpg",
        source=SourceInfo("JPEG", 10, 10, 100, "ab" * 32),
        now=NOW,
    )
    return attrs.evolve(task, status=status, **changes)  # type: ignore[arg-type]


def test_table_is_the_designed_lifecycle() -> None:
    table = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert table == LEGAL
    assert set(TRANSITIONS) == set(TaskStatus)


@pytest.mark.parametrize(("status", "move"), list(itertools.product(TaskStatus, MOVES)))
def test_every_move_from_every_status(status: TaskStatus, move: str) -> None:
    sources, target, apply = MOVES[move]
    task = make_task(status)
    if status not in sources:
        with pytest.raises(IllegalTransition, match=f"from {status} to {target}"):
            apply(task)
        return
    assert (status, target) in LEGAL
    moved = apply(task)
    assert (moved.status, moved.updated_at) == (target, LATER)
    assert task.status == status  # the original is untouched


def test_every_legal_edge_has_a_method() -> None:
    edges = {(src, target) for sources, target, _ in MOVES.values() for src in sources}
    assert edges == LEGAL


def test_claim_counts_an_attempt() -> None:
    task = make_task().claim(LATER)
    assert (task.attempts, task.started_at) == (1, LATER)


def test_requeue_delays_and_keeps_the_error() -> None:
    task = make_task(S.PROCESSING).requeue(LATER, delay=timedelta(seconds=3), error=ERROR)
    assert task.available_at == LATER + timedelta(seconds=3)
    assert task.error == ERROR


def test_final_moves_stamp_finished_at() -> None:
    output = Output("default", "outputs/x/default.jpg", "jpeg", 5, 5, 10)
    done = make_task(S.PROCESSING).succeed((output,), LATER)
    assert (done.finished_at, done.outputs, done.error) == (LATER, (output,), None)
    assert done.status.is_final
    assert make_task(S.PROCESSING).fail(ERROR, LATER).error == ERROR


def test_retry_resets_attempts_and_outputs() -> None:
    dead = make_task(S.DEAD, attempts=5, finished_at=NOW)
    task = dead.retry(LATER)
    assert (task.status, task.attempts, task.available_at, task.finished_at) == (
        S.QUEUED,
        0,
        LATER,
        None,
    )


def test_final_statuses() -> None:
    assert {s for s in TaskStatus if s.is_final} == {S.SUCCEEDED, S.FAILED, S.DEAD, S.CANCELLED}
    assert S.QUEUED == "queued"  # a str enum: JSON and SQL see plain strings


def test_ids_are_random_and_url_safe() -> None:
    ids = {new_task_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


def test_after_failure_requeues_until_the_attempts_run_out() -> None:
    task = make_task(S.PROCESSING, attempts=2, max_attempts=3)
    again = task.after_failure(ERROR, LATER, delay=timedelta(seconds=4))
    assert (again.status, again.available_at, again.error) == (
        S.QUEUED,
        LATER + timedelta(seconds=4),
        ERROR,
    )
    last = make_task(S.PROCESSING, attempts=3, max_attempts=3)
    dead = last.after_failure(ERROR, LATER, delay=timedelta(seconds=4))
    assert (dead.status, dead.finished_at, dead.error) == (S.DEAD, LATER, ERROR)


def test_unclaim_gives_the_attempt_back() -> None:
    task = make_task().claim(NOW).unclaim(LATER)
    assert (task.status, task.attempts, task.available_at) == (S.QUEUED, 0, LATER)
