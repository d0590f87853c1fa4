"""Submission: checking uploads, storing their originals, and recording their tasks.

An upload is checked whole before anything is stored (its priority, its pipeline against the
limits and presets, its bytes and image header, the sizes of the outputs it asks for); its
original is then stored under a content-addressed key, and only then is its task recorded as
``queued``. A refused upload leaves nothing behind, and a recorded task always has its original.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Final

import attrs

from imageproc import _keys as keys
from imageproc._clock import Clock
from imageproc._events import Events, emit
from imageproc._formats import content_type_for, extension_for
from imageproc._idempotency import (
    DEFAULT_RETENTION,
    IdempotencyRecord,
    checked_key,
    conflict,
    fingerprint,
    scope_of,
)
from imageproc._presets import resolve_pipeline
from imageproc._protocols import (
    DeliveryStore,
    IdempotencyStore,
    QueueLimits,
    Repository,
    SourceLookup,
    Storage,
    TransactionalRepository,
)
from imageproc._retrying import RetryPolicy
from imageproc._task import SourceInfo, Task, TaskStatus, checked_metadata
from imageproc._upload import Accepted, PipelineSpec, Upload, read_source, scheduled_at
from imageproc.delivery._webhooks import Webhooks
from imageproc.engine import _imaging as imaging
from imageproc.engine import _location as location
from imageproc.engine._imaging import ImageLimits
from imageproc.errors import (
    ConfigurationError,
    ImageprocError,
    InvalidInput,
    QueueFull,
    TaskNotFound,
    copies_for,
    copy_of,
)
from imageproc.pipeline._pipeline import DEFAULT_PIPELINE, Pipeline, PipelineLimits

__all__ = ["Submission"]

logger = logging.getLogger("imageproc")

#: Threads that store the originals of one submit_many concurrently (they wait on disk or
#: network, not on the CPU).
_IO_THREADS: Final = 8


class Submission:
    """Checks uploads, stores their originals and records their tasks; :class:`Processor`'s
    ``submit`` and ``submit_many`` are this class's.

    ``storage`` and ``repository`` may be replaced on a live instance (tests wrap them).
    """

    def __init__(
        self,
        storage: Storage,
        repository: Repository,
        *,
        pipeline: PipelineSpec = None,
        presets: Mapping[str, Pipeline | str] | None = None,
        presets_only: bool = False,
        image_limits: ImageLimits | None = None,
        pipeline_limits: PipelineLimits | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock,
        events: Events | None = None,
        queue_limits: QueueLimits | None = None,
        strip_location: bool = False,
        idempotency_retention: timedelta = DEFAULT_RETENTION,
        webhooks: Webhooks | None = None,
    ) -> None:
        if idempotency_retention <= timedelta(0):
            raise ValueError(f"idempotency_retention must be positive, got {idempotency_retention}")
        #: How long an idempotency key is remembered after its first request.
        self.idempotency_retention = idempotency_retention
        #: How webhooks are sent (callback URLs are checked against its ``allow``), or None.
        self.webhooks = webhooks
        self.storage = storage
        self.repository = repository
        #: Take location data out of originals before they are stored
        #: (:func:`imageproc.engine.strip_location`).
        self.strip_location = strip_location
        #: Checked when each task is recorded (:class:`~imageproc.QueueLimits`).
        self.queue_limits = queue_limits
        self.image_limits = image_limits or ImageLimits()
        self.pipeline_limits = pipeline_limits or PipelineLimits()
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.events = events or Events()
        self.presets_only = presets_only
        self.presets: dict[str, Pipeline] = {}
        for name, spec in (presets or {}).items():
            preset = spec if isinstance(spec, Pipeline) else Pipeline.parse(spec)
            self.pipeline_limits.check(preset)
            self.presets[name] = preset
        self.pipeline = DEFAULT_PIPELINE
        if pipeline is not None:
            self.pipeline = self._resolve(pipeline, allow_any=True)
        self._lock = threading.Lock()
        self._io: ThreadPoolExecutor | None = None
        self._io_closed = False

    def close(self) -> None:
        """Stop the I/O threads; a later ``submit_many`` is refused upload by upload."""
        with self._lock:
            # A submit_many after close() is refused, upload by upload, instead of starting
            # threads nobody would stop.
            io, self._io, self._io_closed = self._io, None, True
        if io is not None:
            io.shutdown()

    def submit(self, upload: Upload) -> Task:
        """Check ``upload``, store its original, record its task; raise what refused it."""
        return self.accept(upload).task_or_raise()

    def accept(self, upload: Upload) -> Accepted:
        """What :meth:`submit` does, answered with how the upload was accepted."""
        return self._accept_one(self._prepare(upload))

    def _accept_one(self, item: _Prepared) -> Accepted:
        """Accept one checked upload: reuse what its idempotency key or ``dedupe`` finds, else
        store its original and record its task (with its key, in the application's
        transaction if it gave a connection)."""
        upload = item.upload
        key = item.idempotency_key
        if upload.connection is not None:
            self._joinable().check_connection(upload.connection)  # before anything is stored
        if key is not None:
            store = self._key_store()
            scope = scope_of(upload.owner)
            # Asked first, so a retried request neither stores its original nor waits on a lock.
            known = self.retry.call(lambda: store.find_key(scope, key, now=self.clock()))
            if known is not None:
                return self._replay(known, item)
        existing = self._duplicate_of(item) if upload.dedupe else None
        task = None
        reused: set[str] = set()
        if existing is None:
            self._store_original(item, reused)
            task = self._new_task(item)
        answer = existing or task
        assert answer is not None
        record = None if key is None else self._record_for(item, key, answer, task)
        kept = self._write(upload.connection, record, task)
        if kept is not record:  # another request under this key won the race
            assert kept is not None
            return self._replay(kept, item, upload.connection)
        if task is not None:
            if reused:
                self._keep_original(item)
            self._submitted(task)
        return Accepted(answer, record)

    def _record_for(
        self, item: _Prepared, key: str, answer: Task, task: Task | None
    ) -> IdempotencyRecord:
        """What the key will be remembered as: the task it is answered with, from now on."""
        now = task.created_at if task is not None else self.clock()
        return IdempotencyRecord(
            scope=scope_of(item.upload.owner),
            key=key,
            fingerprint=item.fingerprint,
            task_id=answer.id,
            status=answer.status,
            created_at=answer.created_at,
            remembered_at=now,
            expires_at=now + self.idempotency_retention,
        )

    def _write(
        self, connection: object, record: IdempotencyRecord | None, task: Task | None
    ) -> IdempotencyRecord | None:
        """Record ``task`` and remember ``record`` (either may be None) together: in the
        application's transaction on ``connection``, if given. The record kept: ``record``, or
        the one of an earlier request under its key."""
        limits = self.limits()
        if connection is not None:
            return self._joinable().add_in(connection, task, record=record, **limits)
        if record is not None:
            return self._key_store().add_keyed(record, task, **limits)
        if task is not None:
            self.repository.add(task, **limits)
        return None

    def _replay(
        self, known: IdempotencyRecord, item: _Prepared, connection: object = None
    ) -> Accepted:
        if known.fingerprint != item.fingerprint:
            raise conflict(known.key)
        try:
            if connection is not None:
                # The key may be the application's own, not committed yet (the same key twice in
                # one transaction): only its connection sees the task.
                task: Task | None = self._joinable().get_in(connection, known.task_id)
            else:
                task = self.retry.call(self.repository.get, known.task_id)
        except TaskNotFound:  # retention purged the task before the key
            task = None
        return Accepted(task, known, replayed=True)

    def _joinable(self) -> TransactionalRepository:
        repository = self.repository
        if not isinstance(repository, TransactionalRepository):
            raise ConfigurationError(
                f"connection= needs a repository that can write in the application's"
                f" transaction, the SQL one ({type(repository).__name__} has no add_in)"
            )
        return repository

    def _key_store(self) -> IdempotencyStore:
        repository = self.repository
        if not isinstance(repository, IdempotencyStore):
            raise ConfigurationError(
                f"idempotency keys need a repository that remembers them"
                f" ({type(repository).__name__} has no add_keyed)"
            )
        return repository

    def limits(self) -> dict[str, QueueLimits]:
        """The keyword that gives a repository the queue limits, if there are any: a
        repository written before limits existed takes none, and is given none without them."""
        limits = self.queue_limits
        return {"limits": limits} if limits is not None and limits.any else {}

    def submit_many(self, uploads: Sequence[Upload]) -> list[Task | Exception]:
        """Several uploads at once, as :meth:`Processor.submit_many
        <imageproc._processor.Processor.submit_many>` describes: for each, its task or the
        exception that refused it."""
        final: list[Task | Exception] = []
        for result in self.accept_many(uploads):
            if isinstance(result, Accepted):
                try:
                    final.append(result.task_or_raise())
                except TaskNotFound as error:
                    final.append(error)
            else:
                final.append(result)
        return final

    def accept_many(self, uploads: Sequence[Upload]) -> list[Accepted | Exception]:
        """What :meth:`submit_many` does, each upload answered with how it was accepted.

        An upload under an idempotency key or with a connection is accepted on its own, in the
        order given (its key is remembered in the transaction that records its task); the rest
        together."""
        results: list[Accepted | Exception | _Prepared] = []
        # Each original is stored (on the I/O threads) as soon as its upload has been checked,
        # while the next is checked; the same bytes twice are stored once.
        storing: dict[str, Future[None]] = {}
        reused: set[str] = set()  # originals found stored already
        for upload in uploads:
            try:
                item = self._prepare(upload)
            except Exception as error:  # this upload's alone (a closed file, say)
                results.append(error)
                continue
            if upload.idempotency_key is not None or upload.connection is not None:
                # Each in a transaction of its own (or the application's).
                try:
                    results.append(self._accept_one(item))
                except Exception as error:
                    results.append(error)
                continue
            if upload.dedupe:
                try:
                    existing = self._duplicate_of(item)
                except Exception as error:
                    results.append(error)
                    continue
                if existing is not None:
                    results.append(Accepted(existing))
                    continue
            results.append(item)
            if item.key not in storing:
                storing[item.key] = self._store_soon(item, reused, alone=len(uploads) == 1)
        stored = {key: _stored(future) for key, future in storing.items()}
        prepared = [item for item in results if isinstance(item, _Prepared)]
        accepted = [item for item in prepared if stored[item.key] is None]
        tasks = {id(item): self._new_task(item) for item in accepted}
        unrecorded = self._record_new(accepted, tasks)
        recorded_on = {item.key: item for item in accepted if id(item) not in unrecorded}
        for key in reused & recorded_on.keys():
            try:
                self._keep_original(recorded_on[key])
            except Exception:  # the tasks are recorded: their worker will say what is wrong
                logger.exception("could not check the original %s", key)
        final: list[Accepted | Exception] = []
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
                final.append(Accepted(task))
        return final

    def _record_new(
        self, accepted: list[_Prepared], tasks: dict[int, Task]
    ) -> dict[int, Exception]:
        """Record the tasks in one transaction; for each that was not, the error (by the id of
        its upload)."""
        if not tasks:
            return {}
        try:
            self.repository.add_many(list(tasks.values()), **self.limits())
        except QueueFull as error:
            if len(tasks) == 1:
                return {id(accepted[0]): error}
            # Not all of them fit: each alone, so the ones that do are recorded.
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
                self.repository.add(tasks[id(item)], **self.limits())
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
        scheduled_at(upload.not_before, self.clock())  # checked now, applied when recorded
        metadata = {} if upload.metadata is None else checked_metadata(upload.metadata)
        idempotency_key = None
        if upload.idempotency_key is not None:
            idempotency_key = checked_key(upload.idempotency_key)
        callback_url = self._callback_url(upload)
        spec = upload.pipeline
        resolved = self.pipeline if spec is None else self._resolve(spec)
        data = read_source(upload.source, self.image_limits.max_bytes)
        info = imaging.probe(data, self.image_limits)
        if self.strip_location:
            stripped = location.strip_location(data, info.format)
            if stripped is not data:  # the original stored, and addressed, is the stripped one
                data = stripped
                info = attrs.evolve(info, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        imaging.check_output_sizes(
            resolved, info.width, info.height, self.image_limits, input_format=info.format
        )
        # Per owner: finding another owner's bytes already stored would skip the write, and the
        # time saved would tell this owner that someone else uploaded them.
        key = keys.source_key(info.sha256, extension_for(info.format), upload.owner)
        request = ""
        if idempotency_key is not None:
            request = fingerprint(
                sha256=info.sha256,
                pipeline=resolved,
                priority=priority,
                not_before=upload.not_before,
                metadata=metadata,
                dedupe=upload.dedupe,
                callback_url=upload.callback_url,
            )
        return _Prepared(
            upload, resolved, data, info, key, metadata, idempotency_key, request, callback_url
        )

    def _duplicate_of(self, upload: _Prepared) -> Task | None:
        """The task that already makes what ``upload`` asks (same owner, original and
        pipeline), if one succeeded or is queued or processing: a success first, else the newest.
        Best effort: two such uploads at the same moment can both find none."""
        repository = self.repository
        if not isinstance(repository, SourceLookup):
            raise ConfigurationError(
                f"dedupe needs a repository that can find tasks by their original"
                f" ({type(repository).__name__} has no find_by_source)"
            )
        candidates = [
            task
            for task in self.retry.call(repository.find_by_source, upload.key, _REUSABLE)
            # The same callback URL too: a task that announces its end elsewhere (or
            # nowhere) would leave this request's receiver waiting for ever.
            if task.owner == upload.upload.owner
            and task.pipeline == upload.pipeline
            and task.callback_url == upload.callback_url
        ]
        if not candidates:
            return None
        return max(
            candidates, key=lambda task: (task.status == TaskStatus.SUCCEEDED, task.created_at)
        )

    def _new_task(self, upload: _Prepared) -> Task:
        now = self.clock()
        return Task.new(
            pipeline=upload.pipeline,
            source_key=upload.key,
            source=upload.info,
            now=now,
            max_attempts=self.retry.max_attempts,
            priority=upload.upload.priority,
            owner=upload.upload.owner,
            available_at=scheduled_at(upload.upload.not_before, now),
            metadata=upload.metadata,
            callback_url=upload.callback_url,
        )

    def _callback_url(self, upload: Upload) -> str | None:
        """The upload's callback URL (or its owner's default), checked: a URL imageproc may
        send to (:class:`~imageproc.UnsafeURL` otherwise), whose host resolves to addresses
        it may send to."""
        url = upload.callback_url
        webhooks = self.webhooks
        if url is None:
            return None if webhooks is None else webhooks.url_for(upload.owner)
        if webhooks is None:
            raise InvalidInput(
                "callback_url given, but this Processor sends no webhooks"
                " (configure Processor(webhooks=Webhooks(secrets=[…])))"
            )
        if not isinstance(self.repository, DeliveryStore):
            raise ConfigurationError(
                f"callback_url needs a repository that keeps a webhook outbox"
                f" ({type(self.repository).__name__} is no DeliveryStore)"
            )
        target = webhooks.allow.check_url(url, what="callback URL")
        webhooks.allow.resolve(target)
        return target.url

    def _store_original(self, upload: _Prepared, reused: set[str]) -> None:
        """Store the original, unless it is stored already (then its key goes in ``reused``)."""
        # Content-addressed: the same owner's upload is stored once, however often submitted.
        if self.retry.call(self.storage.exists, upload.key):
            reused.add(upload.key)
            return
        self._put_original(upload)

    def _put_original(self, upload: _Prepared) -> None:
        content_type = content_type_for(upload.info.format)
        self.retry.call(
            lambda: self.storage.put(upload.key, upload.data, content_type=content_type)
        )

    def _keep_original(self, upload: _Prepared) -> None:
        """After recording a task on an original that was stored already: make sure it still
        is. The sweep of orphans may have found it unused, before the task was recorded, and
        deleted it since; the bytes are still at hand to put it back."""
        if not self.retry.call(self.storage.exists, upload.key):
            logger.warning("original %s was deleted while a task was recorded on it", upload.key)
            self._put_original(upload)

    def _store_soon(self, upload: _Prepared, reused: set[str], *, alone: bool) -> Future[None]:
        """Store the original on an I/O thread (at once on this one if ``alone``); any
        exception is the upload's own, in the future."""
        if alone:
            return _settled(self._store_original, upload, reused)
        try:
            executor = self._io_executor()
        except RuntimeError as error:  # the Processor is closed
            return _settled(_raise, error)
        return executor.submit(self._store_original, upload, reused)

    def _io_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._io_closed:
                raise RuntimeError("the Processor is closed")
            if self._io is None:
                self._io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="imageproc-io")
            return self._io

    def _submitted(self, task: Task) -> None:
        logger.debug("submitted task %s (%s)", task.id, task.pipeline)
        emit(self.events, "submitted", task)

    def resolve(self, spec: Pipeline | str) -> Pipeline:
        """The pipeline ``spec`` names (a preset name, its text, or one), checked against the
        limits and, with ``presets_only``, refused unless it is a preset."""
        return self._resolve(spec)

    def _resolve(self, spec: Pipeline | str, *, allow_any: bool = False) -> Pipeline:
        return resolve_pipeline(
            spec,
            self.presets,
            self.pipeline_limits,
            presets_only=self.presets_only and not allow_any,
        )


#: What the priority column holds (a 32-bit integer in SQL).
_PRIORITIES: Final = (-(2**31), 2**31 - 1)


@attrs.frozen(eq=False)
class _Prepared:
    """An upload that passed the checks: what storing it and recording its task need."""

    upload: Upload
    pipeline: Pipeline
    data: bytes
    info: SourceInfo
    key: str
    metadata: dict[str, Any]
    #: The upload's idempotency key, checked.
    idempotency_key: str | None = None
    #: For an upload under an idempotency key, what it asks for
    #: (:func:`~imageproc._idempotency.fingerprint`); else empty.
    fingerprint: str = ""
    #: Where the task's final status will be POSTed, checked.
    callback_url: str | None = None


#: The tasks ``dedupe`` may hand back instead of new work: done, or on the way to it.
_REUSABLE: Final = (TaskStatus.SUCCEEDED, TaskStatus.QUEUED, TaskStatus.PROCESSING)


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
