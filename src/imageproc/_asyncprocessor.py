"""The :class:`AsyncProcessor`: the asyncio twin of :class:`~imageproc.Processor`, as
``httpx.AsyncClient`` twins ``httpx.Client``.

Every method is the Processor's, awaitable: each blocking call (image checks, storage, the
database) runs in a small thread pool of the AsyncProcessor's own, so the event loop never waits
on one. ``wait`` holds no thread: it stands on :mod:`imageproc.delivery._asyncwait`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from imageproc._processor import Processor
from imageproc._task import MetadataValue, Task, TaskStatus
from imageproc._upload import PipelineSpec, Source, Upload
from imageproc.delivery._asyncwait import AsyncWaiters, follow
from imageproc.delivery._outbox import Delivery, DeliveryStatus

__all__ = ["AsyncProcessor"]

T = TypeVar("T")

#: Threads of an AsyncProcessor's own pool unless ``threads=`` says otherwise.
DEFAULT_THREADS = 8


class AsyncProcessor:
    """The asyncio twin of :class:`~imageproc.Processor`: the same methods, awaitable.

    ::

        async with AsyncProcessor.from_urls("sqlite:///tasks.db", "file://media") as processor:
            task = await processor.submit(upload_bytes, "thumb=fit:256x256,webp")
            done = await processor.wait(task.id, timeout=30)

    Build one with :meth:`from_urls` or :meth:`in_memory` (it then owns its Processor and
    closes it in :meth:`aclose`), or wrap a :class:`~imageproc.Processor` the application
    already has: ``AsyncProcessor(processor)`` shares it (:attr:`sync`) and leaves closing it
    to its owner unless ``owns=True``.

    Blocking work (checking and storing an upload, every database and storage call, stopping
    workers) runs in a bounded thread pool of this AsyncProcessor's own, ``threads`` wide, not in
    the event loop's default executor: the database and storage calls of the image API are then
    bounded on their own (at most ``threads`` at once, close to a connection pool's size) and
    can neither starve nor be starved by the application's other ``asyncio.to_thread`` users.
    Its threads start when first needed and end with :meth:`aclose`.

    :meth:`wait` holds no thread and runs no loop of its own: any number of waiters share one
    subscription per task to the backend's completion push and one sweep per event loop for the
    ends only polling finds (SQLite written by another process).

    Workers stay threads (:meth:`start`, :meth:`stop`), as with a Processor.
    """

    def __init__(
        self,
        processor: Processor | None = None,
        *,
        owns: bool = False,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._processor = processor
        self._owns = owns
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="imageproc-async"
        )
        #: For :meth:`from_urls`: how to build the Processor, and the build once started.
        self._build: Callable[[], Processor] | None = None
        self._opening: concurrent.futures.Future[Processor] | None = None
        self._waiters: AsyncWaiters | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def in_memory(cls, *, threads: int = DEFAULT_THREADS, **options: Any) -> AsyncProcessor:
        """An AsyncProcessor over an all-in-memory Processor (:meth:`Processor.in_memory`;
        ``options`` go to it), which it owns. Nothing here blocks."""
        return cls(Processor.in_memory(**options), owns=True, threads=threads)

    @classmethod
    def from_urls(
        cls,
        database_url: str,
        storage_url: str,
        *,
        threads: int = DEFAULT_THREADS,
        **options: Any,
    ) -> AsyncProcessor:
        """An AsyncProcessor over ``Processor.from_urls(database_url, storage_url, **options)``
        (:meth:`Processor.from_urls`: ``migrate``, ``engine_options``, ``storage_options`` and
        the Processor's options), which it owns.

        Returns at once, having done nothing blocking: connecting to the database and migrating
        its schema run in this AsyncProcessor's thread pool when it is opened, by
        ``async with`` (``__aenter__``) or :meth:`open`, or else by the first call that needs
        the Processor. A bad URL or an unreachable database raises there, not here.
        """
        processor = cls(None, owns=True, threads=threads)
        processor._build = functools.partial(
            Processor.from_urls, database_url, storage_url, **options
        )
        return processor

    async def open(self) -> Self:
        """Wait until the Processor is built (for :meth:`from_urls`: connected and migrated, in a
        thread); at once for one built already. ``async with`` calls it."""
        await self._ready()
        return self

    @property
    def sync(self) -> Processor:
        """The :class:`~imageproc.Processor` this one awaits, to share with synchronous code
        (worker processes, a CLI, a WSGI app). :class:`RuntimeError` before :meth:`open` for
        one made by :meth:`from_urls` whose Processor is not built yet."""
        if self._processor is None:
            if self._opening is None or not self._opening.done():
                raise RuntimeError("the AsyncProcessor is not open yet: await open() first")
            self._processor = self._opening.result()
        return self._processor

    async def aclose(self) -> None:
        """Stop the workers and close the Processor (in a thread), if this AsyncProcessor owns
        it; then end its own threads. Calls after this raise :class:`RuntimeError`. One made by
        :meth:`from_urls` and never opened has nothing to close."""
        if self._closed:
            return
        try:
            processor = self._processor
            if processor is None and self._opening is not None:
                # Being built or built: close what was built (a failed build left nothing).
                with contextlib.suppress(Exception):
                    processor = await asyncio.wrap_future(self._opening)
            if self._owns and processor is not None:
                await self._call(processor.close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the task API -------------------------------------------------------------------------

    async def submit(
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
        """Store an image and queue a task to make the variants of ``pipeline`` from it, in a
        thread: :meth:`Processor.submit`, with the same arguments, answer and exceptions.

        ``source`` may be bytes, a path or a binary stream; a stream is read in the thread.
        ``connection`` is a *synchronous* SQLAlchemy ``Connection`` or ``Session`` (the task is
        written in its transaction from the pool thread: do not use it concurrently meanwhile).
        """
        processor = await self._ready()
        return await self._call(
            processor.submit,
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

    async def submit_url(self, url: str, pipeline: PipelineSpec = None, **options: Any) -> Task:
        """Fetch the image at ``url`` and submit it, in a thread (:meth:`Processor.submit_url`:
        the URL checked, the fetch bounded, nothing stored if it fails)."""
        processor = await self._ready()
        return await self._call(processor.submit_url, url, pipeline, **options)

    async def reprocess(
        self,
        task_id: str,
        pipeline: PipelineSpec = None,
        *,
        missing_only: bool = True,
        priority: int = 0,
    ) -> Task:
        """More variants of a task's stored original, as a new task, in a thread
        (:meth:`Processor.reprocess`)."""
        processor = await self._ready()
        return await self._call(
            processor.reprocess, task_id, pipeline, missing_only=missing_only, priority=priority
        )

    async def submit_many(self, uploads: Sequence[Upload]) -> list[Task | Exception]:
        """Submit several uploads at once, in a thread: for each, in order, its task or the
        exception that refused it (:meth:`Processor.submit_many`)."""
        processor = await self._ready()
        return await self._call(processor.submit_many, uploads)

    async def get(self, task_id: str) -> Task:
        """The task with this id; :class:`~imageproc.TaskNotFound` if there is none."""
        processor = await self._ready()
        return await self._call(processor.get, task_id)

    async def wait(self, task_id: str, timeout: float) -> Task:
        """The task once it is in a final status; :class:`~imageproc.WaitTimeout` (a
        :class:`TimeoutError`) after ``timeout`` seconds, :class:`~imageproc.TaskNotFound` if
        there is no such task.

        Holds no thread while it waits. Woken by the completion itself: at once when this
        process recorded the end, through ``LISTEN``/``NOTIFY`` when another process did on
        PostgreSQL; ends that only reading finds (another process on SQLite, a PostgreSQL
        listener that lost its connection) are read for all the waiters of this event loop
        at once, by one sweep every ``poll_interval`` of the backend (0.1 s on SQLite).
        Cancelling the awaiting coroutine stops the wait.
        """
        waiters = await self._waiters_ready()
        return await waiters.wait(task_id, timeout)

    async def follow(
        self, task_id: str, *, poll: float = 1.0, limit: float = 600.0
    ) -> AsyncIterator[Task]:
        """The task now, then each time its status, attempt or progress (``task.progress``)
        changes, until it ends (the final task is the last one) or ``limit`` seconds pass::

            async for task in processor.follow(task_id):
                done, total = task.progress

        The end is pushed as for :meth:`wait`; the changes before it are read every ``poll``
        seconds. :class:`~imageproc.TaskNotFound` if there is no such task.
        """
        waiters = await self._waiters_ready()
        async for task in follow(waiters, self.get, task_id, poll=poll, limit=limit):
            yield task

    async def _waiters_ready(self) -> AsyncWaiters:
        processor = await self._ready()
        waiters = self._waiters
        if waiters is None:
            with self._lock:
                if self._waiters is None:
                    repository = processor.repository
                    self._waiters = AsyncWaiters(
                        processor.get,
                        repository=repository,
                        completions=getattr(repository, "completions", None),
                        run_blocking=self._call,
                    )
                waiters = self._waiters
        return waiters

    async def cancel(self, task_id: str) -> Task:
        """Cancel a queued or processing task (:meth:`Processor.cancel`);
        :class:`~imageproc.IllegalTransition` if it has already ended."""
        processor = await self._ready()
        return await self._call(processor.cancel, task_id)

    async def retry(self, task_id: str) -> Task:
        """Queue a failed or dead task again, with a fresh allowance of attempts
        (:meth:`Processor.retry`)."""
        processor = await self._ready()
        return await self._call(processor.retry, task_id)

    async def tasks(
        self,
        status: TaskStatus,
        *,
        owner: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Up to ``limit`` tasks in ``status`` (of ``owner``, with ``metadata``), the most
        recently changed first (:meth:`Processor.tasks`)."""
        processor = await self._ready()
        return await self._call(
            processor.tasks, status, owner=owner, metadata=metadata, limit=limit
        )

    async def read(self, key: str) -> bytes:
        """The stored object under ``key`` (an original's or an output's key), read in a
        thread (:meth:`Processor.read`)."""
        processor = await self._ready()
        return await self._call(processor.read, key)

    async def purge(
        self,
        older_than: timedelta,
        *,
        batch: int = 500,
        orphans_older_than: timedelta | None = timedelta(hours=1),
    ) -> int:
        """Delete tasks that finished more than ``older_than`` ago, with their files, then old
        orphaned originals and expired idempotency keys (:meth:`Processor.purge`); returns how
        many tasks were deleted."""
        processor = await self._ready()
        return await self._call(
            processor.purge, older_than, batch=batch, orphans_older_than=orphans_older_than
        )

    async def deliveries(
        self,
        status: DeliveryStatus | str = DeliveryStatus.DEAD,
        *,
        owner: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Up to ``limit`` webhook deliveries in ``status`` (dead by default), the most recent
        first (:meth:`Processor.deliveries`)."""
        processor = await self._ready()
        return await self._call(
            processor.deliveries, status, owner=owner, task_id=task_id, limit=limit
        )

    async def redeliver(
        self, ids: Collection[str] | None = None, *, owner: str | None = None
    ) -> int:
        """Send dead webhook deliveries again (:meth:`Processor.redeliver`); how many."""
        processor = await self._ready()
        return await self._call(processor.redeliver, ids, owner=owner)

    # -- workers ------------------------------------------------------------------------------

    async def start(
        self, workers: int | tuple[int, int] = 4, *, idle_timeout: float = 30.0
    ) -> None:
        """Start background worker threads in this process (:meth:`Processor.start`); they are
        threads, not coroutines, and run the image work off the event loop."""
        processor = await self._ready()
        await self._call(processor.start, workers, idle_timeout=idle_timeout)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers, letting tasks in flight finish for up to ``timeout`` seconds
        (:meth:`Processor.stop`); that wait happens in a thread, not on the loop."""
        processor = await self._ready()
        await self._call(processor.stop, timeout)

    # -- helpers ------------------------------------------------------------------------------

    async def _ready(self) -> Processor:
        if self._closed:
            raise RuntimeError("the AsyncProcessor is closed")
        if self._processor is None:
            with self._lock:  # concurrent first calls share one build
                if self._opening is None:
                    assert self._build is not None
                    self._opening = self._executor.submit(self._build)
            self._processor = await asyncio.wrap_future(self._opening)
        return self._processor

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in this AsyncProcessor's thread pool, with the caller's
        context variables (as :func:`asyncio.to_thread` does)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call: Callable[[], T] = functools.partial(context.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)
