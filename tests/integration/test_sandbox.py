"""Render processes: the same results as rendering in a thread, a deadline that holds inside the
decoder, and a render that cancelling stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imageproc import (
    ImageLimits,
    InvalidImage,
    LeaseLost,
    Pipeline,
    RenderFailed,
    RenderTimeout,
    TaskStatus,
)
from imageproc import _sandbox as sandbox
from imageproc._sandbox import InlineRenderer, ProcessRenderer
from imageproc.testing import memory_processor, sample_image
from tests.support.images import progressive_jpeg

#: Seconds of decoding in a small file (about 4 ms a scan at 4 MP): past every deadline here.
BOMB = progressive_jpeg((2000, 2000), extra_scans=3000)
#: Limits that let the bomb reach the decoder, as a file the walks cannot judge would.
UNLIMITED = ImageLimits(max_scans=1_000_000)
PIPELINE = Pipeline.parse("t=fit:100x100,webp;b=fit:300x300,png,placeholder")


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def render_in_thread(
    renderer: ProcessRenderer, task_id: str, claim: str = ""
) -> tuple[threading.Thread, list[Exception]]:
    raised: list[Exception] = []

    def run() -> None:
        try:
            renderer.render(task_id, BOMB, PIPELINE, UNLIMITED, claim=claim)
        except Exception as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    key = (task_id, claim)
    eventually(lambda: key in renderer._running and renderer._running[key].ready)
    return thread, raised


def test_a_render_process_gives_what_a_thread_gives() -> None:
    data = sample_image(800, 600, orientation=6)
    stages: list[str] = []
    in_process = ProcessRenderer().render(
        "t", data, PIPELINE, ImageLimits(), stage=lambda name, _: stages.append(name)
    )
    assert in_process == InlineRenderer().render("t", data, PIPELINE, ImageLimits())
    assert stages == ["decode", "transform", "encode"]


def test_errors_come_back_as_themselves() -> None:
    with pytest.raises(InvalidImage, match="not a readable image") as error:
        ProcessRenderer().render("t", b"not an image", PIPELINE, ImageLimits())
    assert not error.value.transient


def test_a_render_past_its_deadline_is_killed_and_the_next_one_runs() -> None:
    renderer = ProcessRenderer(timeout=2)
    started = time.monotonic()
    with pytest.raises(RenderTimeout, match="longer than the limit of 2 seconds") as error:
        renderer.render("bomb", BOMB, PIPELINE, UNLIMITED)
    assert time.monotonic() - started < 5  # decoding it takes 12 s
    assert not error.value.transient
    assert len(renderer.render("next", sample_image(), PIPELINE, ImageLimits())) == 2


def test_abort_stops_a_render_under_way() -> None:
    renderer = ProcessRenderer(timeout=None)
    thread, raised = render_in_thread(renderer, "bomb")
    assert renderer.abort("bomb")
    thread.join(3)
    assert not thread.is_alive()
    assert isinstance(raised[0], LeaseLost)
    assert not renderer.abort("bomb")  # nothing under way any more


def test_abort_names_the_claim_it_stops() -> None:
    renderer = ProcessRenderer(timeout=None)
    thread, raised = render_in_thread(renderer, "bomb", claim="new lease")
    assert not renderer.abort("bomb", "old lease")  # a lease lost earlier: not this render
    assert renderer.abort("bomb", "new lease")
    thread.join(3)
    assert isinstance(raised[0], LeaseLost)


def test_an_abort_as_the_answer_arrives_still_stops_the_render_and_its_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    renderer = ProcessRenderer()
    answered = sandbox._Child.ask

    def abort_then_answer(child: sandbox._Child, *args: Any) -> Any:
        answer = answered(child, *args)
        renderer.abort("late")  # after the answer came, before the render returns
        return answer

    monkeypatch.setattr(sandbox._Child, "ask", abort_then_answer)
    with pytest.raises(LeaseLost):
        renderer.render("late", sample_image(), PIPELINE, ImageLimits())
    monkeypatch.undo()
    assert all(not child.aborted for child in sandbox._children._idle)
    assert len(renderer.render("next", sample_image(), PIPELINE, ImageLimits())) == 2


def test_renders_go_on_when_descriptors_pass_1024() -> None:
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        sandbox._children.close_all()  # the next render starts a process on a high descriptor
        assert len(ProcessRenderer().render("t", sample_image(), PIPELINE, ImageLimits())) == 2
    finally:
        for fd in opened:
            os.close(fd)


def test_a_render_process_that_dies_is_a_transient_failure() -> None:
    renderer = ProcessRenderer(timeout=None)
    thread, raised = render_in_thread(renderer, "bomb")
    os.kill(renderer._running["bomb", ""].process.pid, signal.SIGKILL)  # an OOM killer, a segfault
    thread.join(3)
    assert isinstance(raised[0], RenderFailed)
    assert raised[0].transient
    assert "killed by signal 9" in raised[0].message


def test_a_task_past_the_deadline_fails_and_frees_its_worker() -> None:
    with memory_processor(render_timeout=0.5, image_limits=UNLIMITED) as processor:
        bomb = processor.submit(BOMB, PIPELINE)
        normal = processor.submit(sample_image(), PIPELINE)
        started = time.monotonic()
        processor.start(1)
        failed = processor.wait(bomb.id, timeout=10)
        assert processor.wait(normal.id, timeout=10).status == TaskStatus.SUCCEEDED
    assert time.monotonic() - started < 5
    assert failed.status == TaskStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "render_timeout"


def test_cancelling_stops_the_render_at_once() -> None:
    with memory_processor(render_timeout=None, image_limits=UNLIMITED) as processor:
        processor.start(1)
        bomb = processor.submit(BOMB, PIPELINE)
        eventually(lambda: processor.get(bomb.id).status == TaskStatus.PROCESSING)
        started = time.monotonic()
        assert processor.cancel(bomb.id).status == TaskStatus.CANCELLED
        normal = processor.submit(sample_image(), PIPELINE)  # the only worker is free again
        assert processor.wait(normal.id, timeout=10).status == TaskStatus.SUCCEEDED
        assert time.monotonic() - started < 3
        assert processor.get(bomb.id).status == TaskStatus.CANCELLED


def test_a_cancel_from_another_process_stops_the_render_at_the_next_heartbeat() -> None:
    with memory_processor(
        render_timeout=None, image_limits=UNLIMITED, lease_seconds=0.6
    ) as processor:
        processor.start(1)
        bomb = processor.submit(BOMB, PIPELINE)
        eventually(lambda: processor.get(bomb.id).status == TaskStatus.PROCESSING)
        # As another process's cancel does: on the record, with no word to this processor.
        current = processor.get(bomb.id)
        assert processor.repository.update(current.cancel(processor.clock()), expected=current)
        started = time.monotonic()
        normal = processor.submit(sample_image(), PIPELINE)
        assert processor.wait(normal.id, timeout=10).status == TaskStatus.SUCCEEDED
        assert time.monotonic() - started < 3  # a heartbeat is every 0.2 s here


@pytest.mark.slow
def test_a_render_process_ends_with_its_parent(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(BOMB)
    script = textwrap.dedent(
        f"""
        import threading, time
        from imageproc import ImageLimits, Pipeline
        from imageproc._sandbox import ProcessRenderer
        renderer = ProcessRenderer(timeout=None)
        data = open({str(bomb)!r}, "rb").read()
        threading.Thread(
            target=renderer.render,
            args=("bomb", data, Pipeline.parse("fit:10x10"), ImageLimits(max_scans=10**6)),
            daemon=True,
        ).start()
        while ("bomb", "") not in renderer._running:
            time.sleep(0.01)
        print(renderer._running["bomb", ""].process.pid, flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
        finally:
            parent.kill()
    eventually(lambda: not running(child), timeout=10)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's reaper is missing
