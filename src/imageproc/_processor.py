"""The :class:`Processor`: the public entry point, a thin composition of the parts.

* :mod:`imageproc._submission` checks uploads, stores originals and records their tasks;
* :mod:`imageproc._execution` carries out one lease and records its outcome;
* :mod:`imageproc._worker` runs leases on a pool of threads, and :mod:`imageproc._running`
  holds the Processor's methods that start, stop and run them;
* :mod:`imageproc._delivering` holds its webhook methods (the sender runs with the workers),
  and :mod:`imageproc._purging` its retention methods;
* :mod:`imageproc.backends._urls` builds backends from URLs;
* :mod:`imageproc.delivery._completions` tells ``wait`` when a task has ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Self

import attrs

from imageproc._clock import Clock, utcnow
from imageproc._delivering import Delivering
from imageproc._events import Events
from imageproc._execution import Execution, Recorder
from imageproc._fetching import Fetching
from imageproc._idempotency import DEFAULT_RETENTION
from imageproc._ingest import Ingesting
from imageproc._protocols import Queue, QueueLimits, Repository, Storage
from imageproc._purging import Purging
from imageproc._reprocess import Reprocessing
from imageproc._retrying import RetryPolicy
from imageproc._sandbox import renderer_for
from imageproc._submission import Submission
from imageproc._task import MetadataValue, Task, TaskStatus
from imageproc._upload import PipelineSpec, Source, Upload
from imageproc._worker import WorkerPool
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.backends._urls import backends_from_urls
from imageproc.delivery._waiting import wait_for_end
from imageproc.delivery._webhooks import Webhooks
from imageproc.engine._imaging import ImageLimits
from imageproc.errors import ConfigurationError, ImageprocError
from imageproc.pipeline._pipeline import Pipeline, PipelineLimits

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Processor", "Source", "Upload"]

logger = logging.getLogger("imageproc")

_CHANGE_TRIES = 5


class Processor(Delivering, Purging, Ingesting, Reprocessing):
    """Submit images, let workers make their variants, and read the results.

    The three backends can be anything that implements :class:`~imageproc.Storage`,
    :class:`~imageproc.Queue` and :class:`~imageproc.Repository`; the class
    methods :meth:`in_memory` and :meth:`from_urls` build common combinations.

    Args:
        pipeline: what a task gets when ``submit`` names none (default: one 800 px wide JPEG).
        presets: named pipelines that ``submit`` accepts by name.
        presets_only: accept nothing but preset names (for pipelines that come from remote clients).
        retry: how failing tasks and calls are tried again (:class:`~imageproc.RetryPolicy`:
            attempts per task, requeue backoff and jitter, in-place tries).
        lease_seconds: how long a worker's claim lasts between heartbeats.
        isolation: where the image work of a task runs: ``"process"`` (the default) in a render
            process, where ``render_timeout`` holds even inside a decoder and a cancelled task's
            work is stopped; ``"thread"`` in the worker's thread,
            with neither, for trusted images only.
        queue_limits: how many tasks may wait, in all and per owner
            (:class:`~imageproc.QueueLimits`), checked atomically as each task is recorded and
            when :meth:`retry` queues one again; beyond them :class:`~imageproc.QueueFull`.
        strip_location: take location data (EXIF GPS, XMP ``exif:GPS…``) out of each original
            before it is stored, pixels untouched; JPEG, PNG and WebP
            (:func:`imageproc.engine.strip_location`).
        idempotency_retention: how long an idempotency key is remembered after its first
            request (``submit(…, idempotency_key=…)``); :meth:`purge` forgets older ones.
        webhooks: how tasks' final statuses are POSTed to their callback URLs
            (:class:`~imageproc.Webhooks`: signing secrets, per-owner default URLs, allowlist,
            schedule); None: no webhooks, and a ``callback_url`` is refused.
        fetching: how :meth:`submit_url` fetches images (:class:`~imageproc.Fetching`:
            allowlist, the only hosts, timeouts); by default from any public address.
        render_timeout: most seconds one task's decode, transforms and encodes may take (wall
            time; None for no limit). Past it the render process is killed and the task fails
            with :class:`~imageproc.RenderTimeout`. Only with ``isolation="process"``.
        image_limits: what an upload may be (bytes, pixels, formats).
        pipeline_limits: what a pipeline may ask for (largest side, variants, operations).
        poll_interval: longest an idle worker sleeps before it looks for work again.
        clock: where timestamps come from (timezone-aware UTC).
        events: hooks called as tasks move (:class:`imageproc.Events`; metrics use it).
        max_attempts: shortcut for ``retry=RetryPolicy(max_attempts=…)``, kept for a release.
        backoff_base: shortcut for the policy's ``backoff_base``, kept for a release.
        backoff_max: shortcut for the policy's ``backoff_max``, kept for a release.
        in_place_tries: shortcut for the policy's ``in_place_tries``, kept for a release.
        in_place_wait: shortcut for the policy's ``in_place_wait``, kept for a release.
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
        retry: RetryPolicy | None = None,
        lease_seconds: float = 30.0,
        isolation: Literal["process", "thread"] = "process",
        render_timeout: float | None = 60.0,
        queue_limits: QueueLimits | None = None,
        strip_location: bool = False,
        idempotency_retention: timedelta = DEFAULT_RETENTION,
        webhooks: Webhooks | None = None,
        fetching: Fetching | None = None,
        image_limits: ImageLimits | None = None,
        pipeline_limits: PipelineLimits | None = None,
        poll_interval: float = 0.5,
        clock: Clock = utcnow,
        events: Events | None = None,
        max_attempts: int | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        in_place_tries: int | None = None,
        in_place_wait: float | None = None,
    ) -> None:
        if lease_seconds <= 0:
            raise ConfigurationError("lease_seconds must be positive")
        if idempotency_retention <= timedelta(0):
            raise ConfigurationError("idempotency_retention must be positive")
        renderer = renderer_for(isolation, render_timeout)
        try:
            self._retry = (retry or RetryPolicy()).replacing(
                max_attempts=max_attempts,
                backoff_base=backoff_base,
                backoff_max=backoff_max,
                in_place_tries=in_place_tries,
                in_place_wait=in_place_wait,
            )
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._clock = clock
        self._events = events or Events()
        self._storage, self._queue, self._repository = storage, queue, repository
        self._recorder = Recorder(queue, retry=self._retry)
        self._submission = Submission(
            storage,
            repository,
            pipeline=pipeline,
            presets=presets,
            presets_only=presets_only,
            image_limits=image_limits,
            pipeline_limits=pipeline_limits,
            retry=self._storage_retry,
            clock=clock,
            events=self._events,
            queue_limits=queue_limits,
            strip_location=strip_location,
            idempotency_retention=idempotency_retention,
            webhooks=webhooks,
        )
        self._webhooks = webhooks
        self._fetching = fetching or Fetching()
        self._dispatcher = None
        self._dispatcher_lock = threading.Lock()
        self._execution = Execution(
            storage,
            self._recorder,
            image_limits=self._submission.image_limits,
            retry=self._storage_retry,
            clock=clock,
            events=self._events,
            renderer=renderer,
        )
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def in_memory(cls, **options: Any) -> Processor:
        """A Processor whose storage, repository and queue all live in memory (tests, scripts)."""
        clock = options.get("clock", utcnow)
        repository = MemoryRepository(clock=clock)
        return cls(MemoryStorage(clock=clock), MemoryQueue(repository), repository, **options)

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
        backends = backends_from_urls(
            database_url,
            storage_url,
            migrate=migrate,
            clock=options.get("clock", utcnow),
            engine_options=engine_options,
            storage_options=storage_options,
        )
        return cls(backends.storage, backends.queue, backends.repository, **options)

    def close(self) -> None:
        """Stop the workers and release the backends' connections (those that hold any)."""
        self.stop()
        self._submission.close()
        closed: set[int] = set()
        for backend in (self.queue, self.repository, self.storage):
            close = getattr(backend, "close", None)
            if callable(close) and id(backend) not in closed:
                closed.add(id(backend))
                close()

    # -- the parts, and their settings ------------------------------------------------------

    @property
    def storage(self) -> Storage:
        """Where originals and outputs are kept (replaceable: tests wrap it)."""
        return self._storage

    @storage.setter
    def storage(self, storage: Storage) -> None:
        self._storage = self._submission.storage = self._execution.storage = storage
        self._submission.retry = self._execution.retry = self._storage_retry

    @property
    def retry_policy(self) -> RetryPolicy:
        """How failing tasks and calls are tried again (replaceable)."""
        return self._retry

    @retry_policy.setter
    def retry_policy(self, policy: RetryPolicy) -> None:
        self._retry = self._recorder.retry = policy
        self._submission.retry = self._execution.retry = self._storage_retry

    @property
    def clock(self) -> Clock:
        """Where timestamps come from (replaceable)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = self._submission.clock = self._execution.clock = clock

    @property
    def events(self) -> Events:
        """The hooks called as tasks move (replaceable)."""
        return self._events

    @events.setter
    def events(self, events: Events) -> None:
        self._events = self._submission.events = self._execution.events = events

    @property
    def queue(self) -> Queue:
        """Where workers lease tasks (replaceable before :meth:`start`: tests wrap it)."""
        return self._queue

    @queue.setter
    def queue(self, queue: Queue) -> None:
        self._queue = self._recorder.queue = queue

    @property
    def repository(self) -> Repository:
        """Where tasks are recorded."""
        return self._repository

    @property
    def _storage_retry(self) -> RetryPolicy:
        # A storage that retries transient errors itself is not retried around again: that would
        # multiply the attempts (and the waits) for nothing.
        if getattr(self._storage, "retries_transient_errors", False):
            return attrs.evolve(self._retry, in_place_tries=1)
        return self._retry

    @property
    def max_attempts(self) -> int:
        """Attempts per task before it is ``dead`` (from :attr:`retry_policy`)."""
        return self.retry_policy.max_attempts

    @property
    def backoff_base(self) -> float:
        """Seconds before the first requeued try (from :attr:`retry_policy`)."""
        return self._retry.backoff_base

    @property
    def backoff_max(self) -> float:
        """Longest requeue delay (from :attr:`retry_policy`)."""
        return self._retry.backoff_max

    @property
    def image_limits(self) -> ImageLimits:
        """What an upload may be."""
        return self._submission.image_limits

    @property
    def pipeline_limits(self) -> PipelineLimits:
        """What a pipeline may ask for."""
        return self._submission.pipeline_limits

    @property
    def presets(self) -> dict[str, Pipeline]:
        """The named pipelines ``submit`` accepts by name."""
        return self._submission.presets

    @property
    def presets_only(self) -> bool:
        """Whether only preset names are accepted."""
        return self._submission.presets_only

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline of a task whose submit names none."""
        return self._submission.pipeline

    def backoff(self, attempt: int) -> float:
        """Seconds before the next try after ``attempt`` failed (:meth:`RetryPolicy.backoff`)."""
        return self.retry_policy.backoff(attempt)

    # -- the task API -----------------------------------------------------------------------

    def submit(
        self,
        source: Source,
        pipeline: PipelineSpec = None,
        *,
        priority: int = 0,
        owner: str | None = None,
        not_before: datetime | timedelta | None = None,
        metadata: Mapping[str, Any] | None = None,
        dedupe: bool = False,
        idempotency_key: str | None = None,
        connection: object = None,
        callback_url: str | None = None,
    ) -> Task:
        """Store an image and queue a task to make the variants of ``pipeline`` from it.

        ``pipeline`` is a :class:`Pipeline`, its text form, a preset name, or None for the
        Processor's default. The pipeline and the image header are checked before anything is
        stored: a bad one raises :class:`~imageproc.InvalidPipeline` or
        :class:`~imageproc.InvalidImage` and leaves nothing behind.

        ``not_before`` schedules the task: it is queued now but no worker claims it before that
        time (a timezone-aware ``datetime``) or that long from now (a ``timedelta``), at most
        366 days ahead; a naive datetime or a negative delay is :class:`~imageproc.InvalidInput`.

        ``metadata`` is a small JSON object the application attaches (at most 4 KiB as JSON;
        keys of 1 to 64 ASCII letters, digits, ``_`` or ``-``): stored on the task as
        ``task.metadata``, shown in its status, and searchable with :meth:`tasks`.

        ``dedupe=True`` returns the task ``owner`` already has for the same image bytes, the
        same pipeline and the same callback URL (or none), if it succeeded or is queued or
        processing (a success first), instead of
        queueing the work again; the image is still checked first. Best effort: two such
        submits at the same moment can both queue work. Needs a repository that is a
        :class:`~imageproc.SourceLookup` (the memory and SQL ones are).

        ``idempotency_key`` makes the submit safe to send again (after a timeout, a crash, a lost
        answer): the first submit under a key records its task and remembers the key, per
        ``owner``, for ``idempotency_retention`` (24 hours unless set); the same key again with
        the same request (the same image bytes, pipeline and options) returns that task as it is
        now, and stores and queues nothing. The same key with a different request is
        :class:`~imageproc.IdempotencyConflict`. Keys are 1 to 255 printable ASCII characters
        (:class:`~imageproc.InvalidInput` otherwise). Submits under one key at the same moment,
        from any number of threads or processes, record one task and all return it. Needs a
        repository that is an :class:`~imageproc.IdempotencyStore` (the memory and SQL ones
        are); a replay of a task already purged raises :class:`~imageproc.TaskNotFound`.

        ``connection`` is the application's SQLAlchemy ``Connection`` (or ORM ``Session``) on
        the database that holds the tasks: the task is written in the application's own
        transaction, so it becomes claimable only when that commits, and a rollback leaves no
        task (the original, stored first, is left for :meth:`purge` to remove). A connection to
        another database or schema is :class:`~imageproc.ConfigurationError`, checked before
        anything is stored. Needs a :class:`~imageproc.TransactionalRepository` (the SQL one
        is). See "Exactly once" in the docs.

        ``callback_url`` has the task's status POSTed there, signed, once it ends (the owner's
        default from :class:`~imageproc.Webhooks` if not given): ``http`` or ``https`` to a
        public address, or one the Processor's ``Webhooks.allow`` names, checked now
        (:class:`~imageproc.UnsafeURL`, resolving the host) and again at every try. Needs
        ``Processor(webhooks=…)``. See "Delivery" in the docs.
        """
        return self._submission.submit(
            Upload(
                source,
                pipeline,
                priority=priority,
                owner=owner,
                not_before=not_before,
                metadata=metadata,
                dedupe=dedupe,
                idempotency_key=idempotency_key,
                connection=connection,
                callback_url=callback_url,
            )
        )

    def submit_many(self, uploads: Sequence[Upload]) -> list[Task | Exception]:
        """Submit several uploads at once: for each, in order, its task or the exception that
        refused it (what :meth:`submit` would raise for it alone).

        Each upload is checked and its original stored on its own, so a bad one does not stop
        the others; the originals are written concurrently, and the accepted tasks are recorded
        in one transaction (one commit, and on a local disk one sync, for all of them). A task is
        recorded only once its original is stored.
        """
        return self._submission.submit_many(uploads)

    def get(self, task_id: str) -> Task:
        """The task with this id; :class:`~imageproc.TaskNotFound` if there is none."""
        return self.repository.get(task_id)

    def wait(self, task_id: str, timeout: float) -> Task:
        """Block until the task is in a final status and return it.

        Woken by the completion itself: at once when this process recorded it, through
        ``LISTEN``/``NOTIFY`` when another process did on PostgreSQL, and within a short poll
        (0.1 s) when another process did on SQLite. Raises :class:`~imageproc.WaitTimeout` (a
        :class:`TimeoutError`) after ``timeout`` seconds.
        """
        completions = getattr(self.repository, "completions", None)
        return wait_for_end(self.get, task_id, timeout=timeout, completions=completions)

    def cancel(self, task_id: str) -> Task:
        """Cancel a queued or processing task; a worker still processing it will not record a
        result. :class:`~imageproc.IllegalTransition` if the task has already ended.

        With ``isolation="process"`` its render is stopped: at once if it runs in this
        process, otherwise when that worker's heartbeat finds the lease gone (within a third of
        ``lease_seconds``)."""
        cancelled = self._change(task_id, lambda task: task.cancel(self.clock()))
        self._execution.abort(task_id)
        return cancelled

    def retry(self, task_id: str) -> Task:
        """Queue a failed or dead task again, with a fresh allowance of attempts; it counts
        against :attr:`queue_limits` as a new task does (:class:`~imageproc.QueueFull`)."""
        return self._change(
            task_id, lambda task: task.retry(self.clock()), **self._submission.limits()
        )

    @property
    def queue_limits(self) -> QueueLimits | None:
        """How many tasks may wait (:class:`~imageproc.QueueLimits`); may be replaced."""
        return self._submission.queue_limits

    @queue_limits.setter
    def queue_limits(self, limits: QueueLimits | None) -> None:
        self._submission.queue_limits = limits

    def tasks(
        self,
        status: TaskStatus,
        *,
        owner: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Up to ``limit`` tasks in ``status`` (of ``owner`` only, if given), the most recently
        changed first. ``tasks(TaskStatus.DEAD)`` is the dead-letter set: look at each task's
        ``error``, fix the cause, then :meth:`retry` it.

        ``metadata`` keeps the tasks whose metadata has each of its keys with that value (JSON
        scalars; ``True`` is not ``1``), e.g. ``tasks(TaskStatus.SUCCEEDED, metadata={"user":
        "42"})``; on PostgreSQL an index serves it.
        """
        if not metadata:  # a repository written before metadata takes no such argument
            return self.repository.find(status, owner=owner, limit=limit)
        return self.repository.find(status, owner=owner, metadata=metadata, limit=limit)

    def read(self, key: str) -> bytes:
        """The stored object under ``key`` (an original's or an output's key)."""
        return self._storage_retry.call(self.storage.get, key)

    def open(self, key: str) -> BinaryIO:
        """A binary stream over the stored object under ``key``; close it when done."""
        return self._storage_retry.call(self.storage.open, key)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------

    def _change(self, task_id: str, change: Callable[[Task], Task], **limits: QueueLimits) -> Task:
        # Compare-and-set, so a worker finishing at the same moment is never overwritten.
        for _ in range(_CHANGE_TRIES):
            current = self.get(task_id)
            changed = change(current)
            if self.repository.update(changed, expected=current, **limits):
                return changed
        raise ImageprocError(f"task {task_id} kept changing; try again", transient=True)
