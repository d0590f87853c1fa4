"""The :class:`Processor`: the public entry point, tying storage, repository and queue together."""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Final, Self, TypeVar

import attrs
import tenacity

from imageproc import imaging, keys
from imageproc.backends.memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.clock import Clock, utcnow
from imageproc.errors import (
    ConfigurationError,
    ImageprocError,
    InvalidImage,
    InvalidInput,
    InvalidPipeline,
    LeaseLost,
    WaitTimeout,
    copies_for,
    copy_of,
    is_transient,
)
from imageproc.events import Events
from imageproc.imaging import ImageLimits
from imageproc.pipeline import DEFAULT_PIPELINE, Pipeline, PipelineLimits
from imageproc.protocols import Lease, Queue, Repository, Storage
from imageproc.task import Output, SourceInfo, Task, TaskError, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from imageproc.worker import WorkerPool

__all__ = ["Processor", "Source", "Upload"]

logger = logging.getLogger("imageproc")

#: What ``submit`` accepts as an image: its bytes, a binary file object, or a path.
Source = bytes | bytearray | memoryview | IO[bytes] | str | os.PathLike[str]
PipelineSpec = Pipeline | str | None

_T = TypeVar("_T")
_CHANGE_TRIES = 5
#: Threads that store the originals of one submit_many concurrently (they wait on disk or
#: network, not on the CPU).
_IO_THREADS: Final = 8


class Processor:
    """Submit images, let workers make their variants, and read the results.

    The three backends can be anything that implements :mod:`imageproc.protocols`; the class
    methods :meth:`in_memory` and :meth:`from_urls` build common combinations.

    Args:
        pipeline: what a task gets when ``submit`` names none (default: one 800 px wide JPEG).
        presets: named pipelines that ``submit`` accepts by name.
        presets_only: accept nothing but preset names (for pipelines that come from remote clients).
        max_attempts: tries per task before a task that keeps failing transiently is ``dead``.
        lease_seconds: how long a worker's claim lasts between heartbeats.
        image_limits: what an upload may be (bytes, pixels, formats).
        pipeline_limits: what a pipeline may ask for (largest side, variants, operations).
        backoff_base: seconds; the requeue delay doubles per attempt from ``backoff_base``...
        backoff_max: ...up to ``backoff_max``, with jitter.
        in_place_tries: quick retries of one storage call before giving up on the attempt...
        in_place_wait: ...with random pauses of up to this many seconds, doubling per try.
        poll_interval: longest an idle worker sleeps before it looks for work again.
        clock: where timestamps come from (timezone-aware UTC).
        events: hooks called as tasks move (:class:`imageproc.events.Events`; metrics use it).
    """

    def __init__(
        self,
        storage: Storage,
        queue: Queue,
        repository: Repository,
        *,
        pipeline: PipelineSpec = None,
        presets: Mapping[str, Pipeline | str] | None = None,
        presets_only: bool = False,
        max_attempts: int = 5,
        lease_seconds: float = 30.0,
        image_limits: ImageLimits | None = None,
        pipeline_limits: PipelineLimits | None = None,
        backoff_base: float = 2.0,
        backoff_max: float = 600.0,
        in_place_tries: int = 3,
        in_place_wait: float = 0.1,
        poll_interval: float = 0.5,
        clock: Clock = utcnow,
        events: Events | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if lease_seconds <= 0:
            raise ConfigurationError("lease_seconds must be positive")
        if in_place_tries < 1:
            raise ConfigurationError("in_place_tries must be at least 1")
        self.storage = storage
        self.queue = queue
        self.repository = repository
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.image_limits = image_limits or ImageLimits()
        self.pipeline_limits = pipeline_limits or PipelineLimits()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.clock = clock
        self.events = events or Events()
        self._in_place_tries = in_place_tries
        self._in_place_wait = in_place_wait
        self.presets_only = presets_only
        self.presets: dict[str, Pipeline] = {}
        for name, spec in (presets or {}).items():
            preset = spec if isinstance(spec, Pipeline) else Pipeline.parse(spec)
            self.pipeline_limits.check(preset)
            self.presets[name] = preset
        self.pipeline = DEFAULT_PIPELINE
        if pipeline is not None:
            self.pipeline = self._resolve(pipeline, allow_any=True)
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()
        self._io: ThreadPoolExecutor | None = None
        self._io_closed = False

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def in_memory(cls, **options: Any) -> Processor:
        """A Processor whose storage, repository and queue all live in memory (tests, scripts)."""
        repository = MemoryRepository(clock=options.get("clock", utcnow))
        return cls(MemoryStorage(), MemoryQueue(repository), repository, **options)

    @classmethod
    def from_urls(
        cls,
        database_url: str,
        storage_url: str,
        *,
        migrate: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Processor:
        """Build a Processor from a database URL and a storage URL.

        Databases: ``sqlite:///path.db`` (the embedded default), ``postgresql+psycopg://…``
        (``postgresql://`` means the same), or ``memory://``. The SQL schema is created or
        upgraded unless ``migrate=False``; ``engine_options`` go to SQLAlchemy.

        Storage: ``file://path``, ``s3://bucket/prefix``, ``memory://`` or any other fsspec
        protocol installed; ``storage_options`` go to the filesystem (e.g. ``endpoint_url`` for
        an S3-compatible server). Other keyword arguments are Processor options.
        """
        clock = options.get("clock", utcnow)
        scheme = database_url.partition("://")[0]
        repository: Repository
        queue: Queue
        if scheme == "memory":
            memory = MemoryRepository(clock=clock)
            repository, queue = memory, MemoryQueue(memory)
        elif scheme.split("+")[0] in ("sqlite", "postgresql"):
            from imageproc.backends.sql import SQLBackend

            sql = SQLBackend(database_url, clock=clock, **dict(engine_options or {}))
            if migrate:
                sql.migrate()
            repository = queue = sql
        else:
            raise ConfigurationError(
                f"unsupported database URL scheme {scheme!r}: use sqlite, postgresql or memory"
            )
        storage: Storage
        if storage_url.partition("://")[0] == "memory" and not storage_options:
            storage = MemoryStorage()
        else:
            from imageproc.backends.fsspec import FsspecStorage

            storage = FsspecStorage(storage_url, **dict(storage_options or {}))
            # FsspecStorage retries transient errors itself; retrying each of its calls again
            # here would multiply the attempts (and the wait) for nothing.
            options.setdefault("in_place_tries", 1)
        return cls(storage, queue, repository, **options)

    def close(self) -> None:
        """Stop the workers and release the backends' connections (those that hold any)."""
        self.stop()
        with self._pool_lock:
            # A submit_many after close() is refused, upload by upload, instead of starting
            # threads nobody would stop.
            io, self._io, self._io_closed = self._io, None, True
        if io is not None:
            io.shutdown()
        closed: set[int] = set()
        for backend in (self.queue, self.repository, self.storage):
            close = getattr(backend, "close", None)
            if callable(close) and id(backend) not in closed:
                closed.add(id(backend))
                close()

    # -- the task API -----------------------------------------------------------------------

    def submit(
        self,
        source: Source,
        pipeline: PipelineSpec = None,
        *,
        priority: int = 0,
        owner: str | None = None,
    ) -> Task:
        """Store an image and queue a task to make the variants of ``pipeline`` from it.

        ``pipeline`` is a :class:`Pipeline`, its text form, a preset name, or None for the
        Processor's default. The pipeline and the image header are checked before anything is
        stored: a bad one raises :class:`~imageproc.InvalidPipeline` or
        :class:`~imageproc.InvalidImage` and leaves nothing behind.
        """
        upload = self._prepare(Upload(source, pipeline, priority=priority, owner=owner))
        self._store_original(upload)
        task = self._new_task(upload)
        self.repository.add(task)
        self._submitted(task)
        return task

    def submit_many(self, uploads: Sequence[Upload]) -> list[Task | Exception]:
        """Submit several uploads at once: for each, in order, its task or the exception that
        refused it (what :meth:`submit` would raise for it alone).

        Each upload is checked and its original stored on its own, so a bad one does not stop
        the others; the originals are written concurrently, and the accepted tasks are recorded
        in one transaction (one commit, and on a local disk one sync, for all of them). A task is
        recorded only once its original is stored.
        """
        results: list[Task | Exception | _Prepared] = []
        # Each original is stored (on the I/O threads) as soon as its upload has been checked,
        # while the next is checked; the same bytes twice are stored once.
        storing: dict[str, Future[None]] = {}
        for upload in uploads:
            try:
                item = self._prepare(upload)
            except Exception as error:  # this upload's alone (a closed file, say)
                results.append(error)
                continue
            results.append(item)
            if item.key not in storing:
                storing[item.key] = self._store_soon(item, alone=len(uploads) == 1)
        stored = {key: _stored(future) for key, future in storing.items()}
        prepared = [item for item in results if isinstance(item, _Prepared)]
        accepted = [item for item in prepared if stored[item.key] is None]
        tasks = {id(item): self._new_task(item) for item in accepted}
        unrecorded = self._record_new(accepted, tasks)
        final: list[Task | Exception] = []
        given: set[int] = set()  # errors already handed out (same bytes twice in one batch)
        for result in results:
            if not isinstance(result, _Prepared):
                final.append(result)
            elif (refused := stored[result.key] or unrecorded.get(id(result))) is not None:
                final.append(copy_of(refused) if id(refused) in given else refused)
                given.add(id(refused))
            else:
                task = tasks[id(result)]
                self._submitted(task)
                final.append(task)
        return final

    def _record_new(
        self, accepted: list[_Prepared], tasks: dict[int, Task]
    ) -> dict[int, Exception]:
        """Record the tasks in one transaction; for each that was not, the error (by the id of
        its upload)."""
        if not tasks:
            return {}
        try:
            self.repository.add_many(list(tasks.values()))
        except ImageprocError as error:  # the database is unavailable: every task is refused
            copies = copies_for(error, len(accepted))
            return {id(item): copy for item, copy in zip(accepted, copies, strict=True)}
        except Exception as error:
            if len(tasks) == 1:
                return {id(accepted[0]): error}
        else:
            return {}
        # One task's fault (a value the database cannot hold, say) must not refuse the others:
        # each alone, so only its own upload gets the error.
        refused: dict[int, Exception] = {}
        for item in accepted:
            try:
                self.repository.add(tasks[id(item)])
            except Exception as error:
                refused[id(item)] = error
        return refused

    def _prepare(self, upload: Upload) -> _Prepared:
        """Check an upload (priority, pipeline, bytes, header, output sizes) before storing it."""
        priority = upload.priority
        if not _PRIORITIES[0] <= priority <= _PRIORITIES[1]:
            raise InvalidInput(
                f"priority must be a whole number from {_PRIORITIES[0]} to {_PRIORITIES[1]},"
                f" got {priority}"
            )
        spec = upload.pipeline
        resolved = self.pipeline if spec is None else self._resolve(spec)
        data = _read_source(upload.source, self.image_limits.max_bytes)
        info = imaging.probe(data, self.image_limits)
        imaging.check_output_sizes(
            resolved, info.width, info.height, self.image_limits, input_format=info.format
        )
        key = keys.source_key(info.sha256, imaging.extension_for(info.format))
        return _Prepared(upload, resolved, data, info, key)

    def _new_task(self, upload: _Prepared) -> Task:
        return Task.new(
            pipeline=upload.pipeline,
            source_key=upload.key,
            source=upload.info,
            now=self.clock(),
            max_attempts=self.max_attempts,
            priority=upload.upload.priority,
            owner=upload.upload.owner,
        )

    def _store_original(self, upload: _Prepared) -> None:
        # Content-addressed: the same upload is stored once, however often it is submitted.
        if not self._in_place(self.storage.exists, upload.key):
            content_type = imaging.content_type_for(upload.info.format)
            self._in_place(
                lambda: self.storage.put(upload.key, upload.data, content_type=content_type)
            )

    def _store_soon(self, upload: _Prepared, *, alone: bool) -> Future[None]:
        """Store the original on an I/O thread (at once on this one if ``alone``); any
        exception is the upload's own, in the future."""
        if alone:
            return _settled(self._store_original, upload)
        try:
            executor = self._io_executor()
        except RuntimeError as error:  # the Processor is closed
            return _settled(_raise, error)
        return executor.submit(self._store_original, upload)

    def _io_executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._io_closed:
                raise RuntimeError("the Processor is closed")
            if self._io is None:
                self._io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="imageproc-io")
            return self._io

    def _submitted(self, task: Task) -> None:
        logger.debug("submitted task %s (%s)", task.id, task.pipeline)
        self._emit("submitted", task)

    def get(self, task_id: str) -> Task:
        """The task with this id; :class:`~imageproc.TaskNotFound` if there is none."""
        return self.repository.get(task_id)

    def wait(self, task_id: str, timeout: float) -> Task:
        """Block until the task is in a final status and return it.

        Raises :class:`~imageproc.WaitTimeout` (a :class:`TimeoutError`) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            task = self.get(task_id)
            if task.status.is_final:
                return task
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"task {task_id} is still {task.status} after {timeout}s")
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.25)

    def cancel(self, task_id: str) -> Task:
        """Cancel a queued or processing task; a worker still processing it will not record a
        result. :class:`~imageproc.IllegalTransition` if the task has already ended."""
        return self._change(task_id, lambda task: task.cancel(self.clock()))

    def retry(self, task_id: str) -> Task:
        """Queue a failed or dead task again, with a fresh allowance of attempts."""
        return self._change(task_id, lambda task: task.retry(self.clock()))

    def tasks(
        self, status: TaskStatus, *, owner: str | None = None, limit: int = 100
    ) -> list[Task]:
        """Up to ``limit`` tasks in ``status`` (of ``owner`` only, if given), the most recently
        changed first. ``tasks(TaskStatus.DEAD)`` is the dead-letter set: look at each task's
        ``error``, fix the cause, then :meth:`retry` it."""
        return self.repository.find(status, owner=owner, limit=limit)

    def read(self, key: str) -> bytes:
        """The stored object under ``key`` (an original's or an output's key)."""
        return self._in_place(self.storage.get, key)

    def open(self, key: str) -> BinaryIO:
        """A binary stream over the stored object under ``key``; close it when done."""
        return self._in_place(self.storage.open, key)

    def purge(self, older_than: timedelta, *, batch: int = 500) -> int:
        """Delete tasks that finished more than ``older_than`` ago, with their outputs, and each
        original no remaining task uses. Returns how many tasks were deleted.

        Records go first and files after, so a crash in between leaves unreferenced files
        (wasted space), never a task whose files are gone.
        """
        cutoff = self.clock() - older_than
        deleted = 0
        while purged := self.repository.purge(cutoff, limit=batch):
            deleted += len(purged)
            for task in purged:
                for output in task.outputs:
                    self._in_place(self.storage.delete, output.key)
            for source_key in {task.source_key for task in purged}:
                if not self.repository.source_in_use(source_key):
                    self._in_place(self.storage.delete, source_key)
            if len(purged) < batch:
                break
        return deleted

    # -- workers ----------------------------------------------------------------------------

    @property
    def pool(self) -> WorkerPool | None:
        """The running worker pool, if :meth:`start` was called and :meth:`stop` was not."""
        return self._pool

    def start(self, workers: int | tuple[int, int] = 4, *, idle_timeout: float = 30.0) -> None:
        """Start background worker threads in this process and return at once.

        ``workers`` is a count, or ``(min, max)`` to grow the pool while tasks wait and shrink it
        back after workers have been idle for ``idle_timeout`` seconds. Stop them with
        :meth:`stop` (or by leaving the ``with`` block).
        """
        from imageproc.worker import WorkerPool

        with self._pool_lock:
            if self._pool is not None and self._pool.running:
                raise RuntimeError("workers are already running; stop() them first")
            low, high = (workers, workers) if isinstance(workers, int) else workers
            self._pool = WorkerPool(
                self, min_workers=low, max_workers=high, idle_timeout=idle_timeout
            )
            self._pool.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let tasks in flight finish for up to ``timeout`` seconds, then release
        the leases of any still running so another worker takes them at once."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop(timeout)

    def run(self, workers: int | tuple[int, int] = 4, *, stop_timeout: float = 30.0) -> None:
        """Run workers in the foreground until SIGINT or SIGTERM, then stop them gracefully.

        For a dedicated worker process; call it from the main thread.
        """
        from imageproc.worker import run_until_signalled

        run_until_signalled(self, workers, stop_timeout=stop_timeout)

    def run_until_idle(self, *, worker: str = "inline") -> int:
        """Process every task that is due, one by one in this thread; return how many were run.

        Tasks put back with a backoff delay are not due, so this always returns.
        """
        count = 0
        while leases := self.queue.claim(worker, lease_seconds=self.lease_seconds):
            for lease in leases:
                self.process(lease)
                count += 1
        return count

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- processing one task ------------------------------------------------------------------

    def process(self, lease: Lease) -> Task | None:
        """Carry out one leased task and record its outcome.

        Returns the task as recorded, or None if the lease was lost meanwhile (the task was
        cancelled, or its lease expired and another worker owns it now). Never raises for a
        problem with the task itself: a permanent error fails the task, a transient one puts it
        back with a backoff delay or, out of attempts, makes it dead.
        """
        task = lease.task
        try:
            outputs = self._produce(task)
        except Exception as error:  # every failure of a task is recorded on the task
            return self._record_failure(lease, error)
        return self._record(lease, task.succeed(outputs, self.clock()), self.queue.complete)

    def _produce(self, task: Task) -> tuple[Output, ...]:
        started = time.perf_counter()
        data = self._in_place(self.storage.get, task.source_key)
        self._emit("stage", "fetch", time.perf_counter() - started)
        rendered_all = imaging.render(
            data,
            task.pipeline,
            self.image_limits,
            stage=lambda name, seconds: self._emit("stage", name, seconds),
        )
        started = time.perf_counter()
        outputs = []
        for rendered in rendered_all:
            key = keys.output_key(task.id, rendered.name, rendered.extension)
            self._in_place(
                lambda k=key, r=rendered: self.storage.put(k, r.data, content_type=r.content_type)
            )
            outputs.append(
                Output(
                    name=rendered.name,
                    key=key,
                    format=rendered.format,
                    width=rendered.width,
                    height=rendered.height,
                    bytes=len(rendered.data),
                    blurhash=rendered.blurhash,
                    dominant_color=rendered.dominant_color,
                )
            )
        self._emit("stage", "store", time.perf_counter() - started)
        return tuple(outputs)

    def _record_failure(self, lease: Lease, error: Exception) -> Task | None:
        task, now = lease.task, self.clock()
        task_error = _task_error(error)
        if not is_transient(error):
            logger.info("task %s failed: %s", task.id, task_error.message)
            return self._record(lease, task.fail(task_error, now), self.queue.complete)
        if not isinstance(error, ImageprocError):
            logger.error("task %s: unexpected error", task.id, exc_info=error)
        delay = self.backoff(task.attempts)
        after = task.after_failure(task_error, now, delay=timedelta(seconds=delay))
        if after.status == TaskStatus.DEAD:
            logger.warning("task %s is dead after %d attempts", task.id, task.attempts)
            return self._record(lease, after, self.queue.complete)
        logger.info("task %s attempt %d failed, retry in %.1fs", task.id, task.attempts, delay)
        return self._record(lease, after, self.queue.release)

    def _record(self, lease: Lease, task: Task, how: Callable[[Lease, Task], None]) -> Task | None:
        try:
            self._in_place(how, lease, task)
        except LeaseLost:
            logger.info("task %s: lease lost, result not recorded", task.id)
            return None
        self._emit("retried" if task.status == TaskStatus.QUEUED else "finished", task)
        return task

    def _emit(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.events, hook)(*args)
        except Exception:
            # Observability must never fail a task.
            logger.exception("events.%s raised", hook)

    def backoff(self, attempt: int) -> float:
        """Seconds before the next try after ``attempt`` failed: exponential, with equal jitter.

        Half the delay is fixed and half random, so delays still grow from one attempt to the next
        while workers that failed together do not all return together.
        """
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    # -- helpers ----------------------------------------------------------------------------

    def _in_place(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Call ``fn``, retrying a few times at once on a transient imageproc error."""
        # The first try runs bare: tenacity's machinery costs more CPU than a local storage
        # call, and almost every call succeeds. A failure is handed to tenacity as its first
        # attempt, so the tries, waits and stop are exactly those of a tenacity loop.
        try:
            return fn(*args)
        except ImageprocError as error:
            if not error.transient or self._in_place_tries == 1:
                raise
            first: list[ImageprocError] = [error]

        def again(*args: Any) -> _T:
            if first:
                raise first.pop()
            return fn(*args)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, ImageprocError) and e.transient
            ),
            stop=tenacity.stop_after_attempt(self._in_place_tries),
            wait=tenacity.wait_random_exponential(
                multiplier=self._in_place_wait, max=max(self._in_place_wait, 2.0)
            ),
            reraise=True,
        )
        return retrying(again, *args)

    def _resolve(self, spec: Pipeline | str, *, allow_any: bool = False) -> Pipeline:
        if isinstance(spec, str) and spec in self.presets:
            return self.presets[spec]
        if self.presets_only and not allow_any:
            # Only the work the presets describe, in whichever form it comes: a Pipeline value
            # (or JSON) or text equal to a preset is that preset; anything else is refused.
            try:
                pipeline = spec if isinstance(spec, Pipeline) else Pipeline.parse(spec)
            except InvalidPipeline:
                pipeline = None
            if pipeline is not None and pipeline in self.presets.values():
                return pipeline
            names = ", ".join(sorted(self.presets)) or "none are configured"
            raise InvalidPipeline(f"only presets are accepted here ({names}), got {str(spec)!r}")
        if isinstance(spec, Pipeline):
            self.pipeline_limits.check(spec)
            return spec
        try:
            if len(spec) > _CACHED_TEXT_CHARS:
                return _parse_checked.__wrapped__(spec, self.pipeline_limits)
            return _parse_checked(spec, self.pipeline_limits)
        except InvalidPipeline:
            if self.presets and _looks_like_a_name(spec):
                names = ", ".join(sorted(self.presets))
                raise InvalidPipeline(
                    f"{spec!r} is neither a preset ({names}) nor a pipeline"
                ) from None
            raise

    def _change(self, task_id: str, change: Callable[[Task], Task]) -> Task:
        # Compare-and-set, so a worker finishing at the same moment is never overwritten.
        for _ in range(_CHANGE_TRIES):
            current = self.get(task_id)
            changed = change(current)
            if self.repository.update(changed, expected=current):
                return changed
        raise ImageprocError(f"task {task_id} kept changing; try again", transient=True)


#: What the priority column holds (a 32-bit integer in SQL).
_PRIORITIES: Final = (-(2**31), 2**31 - 1)


#: Pipeline texts up to this long are parsed once and remembered (clients send the same few).
_CACHED_TEXT_CHARS: Final = 1024


@functools.lru_cache(maxsize=256)
def _parse_checked(text: str, limits: PipelineLimits) -> Pipeline:
    # Pipelines and limits are frozen, so a parse can be shared; a refusal is not cached.
    pipeline = Pipeline.parse(text)
    limits.check(pipeline)
    return pipeline


def _looks_like_a_name(text: str) -> bool:
    """Whether ``text`` is a bare word (a misspelt preset), not an attempt at a pipeline."""
    return bool(text) and not any(mark in text for mark in ":,;= ")


@attrs.frozen(eq=False)
class Upload:
    """One image for :meth:`Processor.submit_many`, with what :meth:`Processor.submit` takes
    besides it."""

    #: The image: its bytes, a binary file object, or a path.
    source: Source
    #: A :class:`Pipeline`, its text, a preset name, or None for the Processor's default.
    pipeline: PipelineSpec = None
    #: Higher goes first.
    priority: int = 0
    #: Who the task belongs to (the HTTP adapter's API key owner), or None.
    owner: str | None = None


@attrs.frozen(eq=False)
class _Prepared:
    """An upload that passed the checks: what storing it and recording its task need."""

    upload: Upload
    pipeline: Pipeline
    data: bytes
    info: SourceInfo
    key: str


def _settled(fn: Callable[..., None], *args: Any) -> Future[None]:
    """A future already holding what ``fn(*args)`` came to, run on this thread."""
    future: Future[None] = Future()
    try:
        fn(*args)
    except Exception as error:
        future.set_exception(error)
    else:
        future.set_result(None)
    return future


def _raise(error: Exception) -> None:
    raise error


def _stored(future: Future[None]) -> Exception | None:
    """What storing an original came to: None, or the upload's own error (an interrupt, not an
    Exception, is raised on)."""
    error = future.exception()
    if error is None or isinstance(error, Exception):
        return error
    raise error


def _read_source(source: Source, limit: int) -> bytes:
    """The bytes of ``source``, reading at most one byte past ``limit`` so an oversize upload is
    refused without holding all of it."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        try:
            with Path(source).open("rb") as file:
                data = file.read(limit + 1)
        except OSError as error:
            raise InvalidImage(f"cannot read {os.fspath(source)!r}: {error.strerror}") from error
    elif hasattr(source, "read"):
        # One read() may return less than asked (raw files, sockets): read to the end or limit.
        chunks, size = [], 0
        while size <= limit:
            chunk = source.read(limit + 1 - size)
            if chunk is None:
                raise InvalidImage("the file object has no data ready (non-blocking?)")
            if not isinstance(chunk, bytes):
                raise InvalidImage("the file object must be opened in binary mode")
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    else:
        raise InvalidImage(f"cannot read an image from a {type(source).__name__}")
    if len(data) > limit:
        raise InvalidImage(f"upload is over the limit of {limit} bytes")
    return data


def _task_error(error: BaseException) -> TaskError:
    if isinstance(error, ImageprocError):
        return TaskError(error.code, error.message)
    # Not ours: its text may hold paths or driver internals, so only the type goes on the task.
    return TaskError("internal_error", f"unexpected {type(error).__name__}; see the worker's log")
