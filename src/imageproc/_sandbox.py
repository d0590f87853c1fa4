"""Rendering out of the worker's process: a deadline that holds inside C code, and a kill switch.

A decoder busy in C cannot be interrupted from Python, and a thread cannot be killed. So by
default each render runs in a *render process*, a child Python that does nothing but
:func:`imageproc.engine.render`: the worker thread sends it the original, the pipeline and the
limits, and waits for the encoded variants. A render that passes its deadline, or whose task is
cancelled or taken over meanwhile (:meth:`ProcessRenderer.abort`), has its process killed; the
worker is free at once and the next render starts a fresh process.

Render processes are started with ``python -c`` (never ``multiprocessing``: its spawn and
forkserver modes run the host application's main script again in every child, and fork is not
safe in a threaded server), kept warm between tasks and shared by every processor in the
process. A child ends when its parent does. The original goes to the child pickled (the child
trusts its parent); what comes back is JSON and raw bytes, never a pickle, so a child that a
hostile file got control of still cannot make its parent run code.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final, Protocol

import attrs

from imageproc import errors
from imageproc.engine import _allocator as allocator
from imageproc.engine import _imaging as imaging
from imageproc.engine._imaging import Rendered
from imageproc.engine._open import ImageLimits
from imageproc.errors import (
    ConfigurationError,
    ImageprocError,
    LeaseLost,
    RenderFailed,
    RenderTimeout,
)
from imageproc.pipeline._pipeline import Pipeline

__all__ = ["InlineRenderer", "ProcessRenderer", "Renderer", "renderer_for", "serve"]

logger = logging.getLogger("imageproc.sandbox")

_LENGTH: Final = struct.Struct(">Q")
#: Idle render processes kept warm for the next render, over every processor of this process.
_MAX_IDLE: Final = max(4, 2 * (os.cpu_count() or 1))
#: Longest a render process may take to start (Python, Pillow, imageproc).
_STARTUP_TIMEOUT: Final = 60.0
#: What a render process writes once it has started.
_READY: Final = b"\x01"
#: The errors a render can end with, by name: a child names one, it never chooses any other
#: class (a LeaseLost from a child would have the outcome dropped).
_CHILD_ERRORS: Final[dict[str, type[ImageprocError]]] = {
    kind.__name__: kind
    for kind in (
        errors.InvalidInput,
        errors.InvalidImage,
        errors.ImageTooLarge,
        errors.InvalidPipeline,
        errors.RenderFailed,
    )
}
_MAX_MESSAGE: Final = 2000
#: Largest JSON header an answer may have (it lists the variants, at most a few dozen).
_MAX_HEADER: Final = 1 << 20
_READ_CHUNK: Final = 1 << 20
#: How often a render process checks that its parent is still alive.
_ORPHAN_CHECK: Final = 1.0

Stage = Callable[[str, float], None]
#: Told how many of a render's variants are made, after each one.
Progress = Callable[[int], None]


class Renderer(Protocol):
    """Where a task's image work runs: :func:`imageproc.engine.render`, and a way to stop it."""

    def render(
        self,
        task_id: str,
        data: bytes,
        pipeline: Pipeline,
        limits: ImageLimits,
        *,
        stage: Stage | None = None,
        claim: str = "",
        progress: Progress | None = None,
    ) -> list[Rendered]:
        """Render every variant of ``pipeline`` from ``data`` (the task's original);
        ``claim`` tells apart two renders of one task (its lease token); ``progress`` is told
        how many variants are made, after each one."""
        ...

    def abort(self, task_id: str, claim: str | None = None) -> bool:
        """Stop rendering ``task_id`` (under that ``claim`` only, if given) if it is under way
        here; whether it was. The call to :meth:`render` then raises
        :class:`~imageproc.LeaseLost`."""
        ...


class InlineRenderer:
    """Renders in the calling thread: no process to start and nothing copied, but no deadline
    and no way to stop a render under way (a cancelled task's outcome is dropped when it ends).
    For trusted images only."""

    def render(
        self,
        task_id: str,
        data: bytes,
        pipeline: Pipeline,
        limits: ImageLimits,
        *,
        stage: Stage | None = None,
        claim: str = "",
        progress: Progress | None = None,
    ) -> list[Rendered]:
        """:func:`imageproc.engine.render`, here and now."""
        return imaging.render(data, pipeline, limits, stage=stage, progress=progress)

    def abort(self, task_id: str, claim: str | None = None) -> bool:
        """A render in a thread cannot be stopped: always False."""
        return False


class ProcessRenderer:
    """Renders in render processes, each render under a deadline of ``timeout`` seconds (wall
    time, None for none): past it the process is killed and the task fails with
    :class:`~imageproc.RenderTimeout`. Thread-safe: one render per calling thread at a time."""

    def __init__(self, *, timeout: float | None = 60.0) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], _Child] = {}

    def render(
        self,
        task_id: str,
        data: bytes,
        pipeline: Pipeline,
        limits: ImageLimits,
        *,
        stage: Stage | None = None,
        claim: str = "",
        progress: Progress | None = None,
    ) -> list[Rendered]:
        """Render in a render process; :class:`~imageproc.RenderTimeout` past the deadline,
        :class:`~imageproc.LeaseLost` if :meth:`abort` stopped it, and
        :class:`~imageproc.RenderFailed` if the process died."""
        key = (task_id, claim)
        request = pickle.dumps(
            (data, pipeline, limits, progress is not None), protocol=pickle.HIGHEST_PROTOCOL
        )
        try:
            child = _children.take()
        except OSError as error:  # out of processes or file descriptors, for now
            raise RenderFailed(f"could not start a render process: {error}") from error
        with self._lock:
            self._running[key] = child
        try:
            header, payload = child.ask(
                request, self.timeout, _max_answer(data, pipeline, limits), progress
            )
        except TimeoutError:
            raise RenderTimeout(
                f"rendering took longer than the limit of {self.timeout:g} seconds"
            ) from None
        except _ChildDied as died:
            if child.aborted:
                raise LeaseLost(f"task {task_id} was cancelled or taken over") from None
            raise RenderFailed(f"the render process died ({died})") from None
        except BaseException:
            child.kill()  # in an unknown state: never handed to another render
            raise
        finally:
            with self._lock:
                if self._running.get(key) is child:
                    del self._running[key]
        if child.aborted:  # after its answer came, before it left _running: not to be reused
            child.kill()
            raise LeaseLost(f"task {task_id} was cancelled or taken over")
        _children.give_back(child)
        if stage is not None:
            for name, seconds in header["stages"]:
                stage(name, seconds)
        if "error" in header:
            raise _error_from(header["error"])
        return list(_rendered_from(header["rendered"], payload))

    def abort(self, task_id: str, claim: str | None = None) -> bool:
        """Kill the render processes working on ``task_id`` (under ``claim`` only, if given);
        whether there was one."""
        with self._lock:
            children = [
                child
                for (running, held), child in self._running.items()
                if running == task_id and claim in (None, held)
            ]
            # Under the lock: the render cannot hand a process back (to serve another task)
            # before it is signalled. Its own thread sees the pipe close and cleans up.
            for child in children:
                child.signal_abort()
        return bool(children)


def renderer_for(isolation: str, timeout: float | None) -> Renderer:
    """The renderer a Processor's ``isolation`` names: ``"process"`` (render processes, under
    ``timeout``) or ``"thread"``; :class:`~imageproc.ConfigurationError` for anything else."""
    if isolation == "process":
        try:
            return ProcessRenderer(timeout=timeout)
        except ValueError as error:
            raise ConfigurationError(f"render_timeout: {error}") from None
    if isolation == "thread":
        return InlineRenderer()
    raise ConfigurationError(f"isolation must be 'process' or 'thread', not {isolation!r}")


class _ChildDied(Exception):
    pass


class _Child:
    """One render process, and the pipes to it."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from imageproc._sandbox import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
            close_fds=True,
        )
        self.aborted = False
        self.ready = False

    def ask(
        self,
        request: bytes,
        timeout: float | None,
        max_answer: int,
        progress: Progress | None = None,
    ) -> tuple[dict[str, Any], bytes]:
        """Send one request and wait for its answer (a JSON header and the bytes after it), all
        of it within ``timeout`` seconds, and no longer than ``max_answer`` bytes; headers that
        say only ``progress`` come before it, and go to ``progress``."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        if not self.ready:  # starting Python and importing Pillow is not the render's time
            try:
                started = _read_within(stdout, 1, time.monotonic() + _STARTUP_TIMEOUT)
            except TimeoutError:
                self.kill()
                raise _ChildDied(f"it did not start within {_STARTUP_TIMEOUT:g} seconds") from None
            except EOFError:
                started = b""
            if started != _READY:
                ended = self._how_it_ended()
                self.kill()
                raise _ChildDied(f"{ended}, before it started")
            self.ready = True
        try:
            _write_all(stdin, _LENGTH.pack(len(request)) + request)
        except OSError as error:  # it died before reading (crashed, or killed by abort)
            self.kill()
            raise _ChildDied(self._how_it_ended()) from error
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            header = self._header(stdout, deadline)
            while "progress" in header:
                if progress is not None:
                    progress(int(header["progress"]))
                header = self._header(stdout, deadline)
            size = int(header["payload"])
            if not 0 <= size <= max_answer:
                raise ValueError(f"an answer of {size} bytes")
            payload = _read_within(stdout, size, deadline)
        except TimeoutError:
            self.kill()
            raise
        except (EOFError, OSError, ValueError, KeyError, TypeError) as error:
            self.kill()
            raise _ChildDied(self._how_it_ended()) from error
        return header, payload

    @staticmethod
    def _header(stdout: IO[bytes], deadline: float | None) -> dict[str, Any]:
        (length,) = _LENGTH.unpack(_read_within(stdout, _LENGTH.size, deadline))
        if length > _MAX_HEADER:
            raise ValueError(f"an answer's header of {length} bytes")
        header: dict[str, Any] = json.loads(_read_within(stdout, length, deadline))
        return header

    def signal_abort(self) -> None:
        """Kill the process from another thread than the one using it."""
        self.aborted = True
        self.process.kill()

    def kill(self) -> None:
        """Kill the process (idempotent), reap it and close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _how_it_ended(self) -> str:
        code = self.process.wait()
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class _Children:
    """The idle render processes of this process, shared by every renderer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Child] = []

    def take(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.alive:
                    return child
                child.kill()
        return _Child()

    def give_back(self, child: _Child) -> None:
        with self._lock:
            if child.alive and not child.aborted and len(self._idle) < _MAX_IDLE:
                self._idle.append(child)
                return
        child.kill()

    def close_all(self) -> None:
        """Stop every idle render process (tests; they also end with this process)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()


_children = _Children()
atexit.register(_children.close_all)


def _read_within(stream: IO[bytes], size: int, deadline: float | None) -> bytes:
    """Exactly ``size`` bytes from the pipe ``stream``, all before ``deadline`` (monotonic;
    None: no deadline): :class:`TimeoutError` past it, :class:`EOFError` if the pipe closes.
    ``poll``, not ``select``: a busy server's descriptors pass select's limit of 1024."""
    poller = select.poll()
    poller.register(stream.fileno(), select.POLLIN)
    chunks = []
    while size > 0:
        if deadline is None:
            wait = None
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            wait = max(1, math.ceil(left * 1000))
        if not poller.poll(wait):
            continue  # the loop measures the time left
        chunk = os.read(stream.fileno(), min(size, _READ_CHUNK))
        if not chunk:
            raise EOFError("the other end closed the pipe")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(stream: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = stream.write(view)
        view = view[written or 0 :]


def _max_answer(data: bytes, pipeline: Pipeline, limits: ImageLimits) -> int:
    # Each variant is bounded by the pixel limit: at most four bytes a pixel encoded, twice
    # that for room; anything beyond is not an answer but a child gone wrong.
    return len(pipeline.variants) * limits.max_pixels * 8 + 64 * len(data) + (1 << 20)


def _error_from(described: dict[str, Any]) -> Exception:
    kind = _CHILD_ERRORS.get(str(described.get("class")))
    message = str(described.get("message", ""))[:_MAX_MESSAGE]
    if kind is not None:
        return kind(message, transient=bool(described.get("transient")))
    return RenderFailed(f"{message}; see the worker's log")


def _rendered_from(described: list[dict[str, Any]], payload: bytes) -> Iterator[Rendered]:
    position = 0
    for fields in described:
        size = int(fields.pop("size"))
        data = payload[position : position + size]
        # Its size as counted here, whatever the render process said.
        yield Rendered(**{**fields, "bytes": len(data)}, data=data)
        position += size


# -- the render process --------------------------------------------------------------------------


def serve() -> None:
    """The render process's main loop: read a request from stdin, render, answer on stdout;
    until stdin closes or the parent is gone."""
    import resource  # POSIX only, and only the render process needs it

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps of hostile data
    allocator.reuse_image_memory()  # as in the worker pool: the same work, the same reasons
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    answers = os.fdopen(os.dup(1), "wb", buffering=0)
    # Whatever a library prints must not corrupt the answers: fd 1 becomes stderr.
    os.dup2(2, 1)
    parent = os.getppid()
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()
    try:
        answers.write(_READY)
        while True:
            try:
                (length,) = _LENGTH.unpack(_read_within(requests, _LENGTH.size, None))
            except EOFError:
                return
            data, pipeline, limits, wanted = pickle.loads(_read_within(requests, length, None))

            def report(done: int) -> None:
                _write_header(answers, {"progress": done})

            header, payload = _answer(data, pipeline, limits, report if wanted else None)
            _write_header(answers, header)
            _write_all(answers, payload)
    except BrokenPipeError:
        return  # the parent has stopped listening: it killed us, or it is gone


def _write_header(answers: IO[bytes], header: dict[str, Any]) -> None:
    encoded = json.dumps(header).encode()
    _write_all(answers, _LENGTH.pack(len(encoded)) + encoded)


def _answer(
    data: bytes, pipeline: Pipeline, limits: ImageLimits, progress: Progress | None
) -> tuple[dict[str, Any], bytes]:
    stages: list[tuple[str, float]] = []
    try:
        rendered = imaging.render(
            data,
            pipeline,
            limits,
            stage=lambda name, seconds: stages.append((name, seconds)),
            progress=progress,
        )
    except ImageprocError as error:
        described = {
            "class": type(error).__name__,
            "message": error.message,
            "transient": error.transient,
        }
        return {"error": described, "stages": stages, "payload": 0}, b""
    except Exception as error:
        logger.exception("render failed")
        described = {"class": None, "message": f"unexpected {type(error).__name__}"}
        return {"error": described, "stages": stages, "payload": 0}, b""
    # Every field but the bytes, which follow the header in order.
    header = [
        {**attrs.asdict(r, filter=lambda field, _: field.name != "data"), "size": len(r.data)}
        for r in rendered
    ]
    payload = b"".join(r.data for r in rendered)
    return {"rendered": header, "stages": stages, "payload": len(payload)}, payload


def _end_with_parent(parent: int) -> None:
    # Orphaned (the parent died without closing our stdin, or we are mid-render): leave.
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK)
    os._exit(1)
