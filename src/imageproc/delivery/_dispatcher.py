"""The webhook sender of one Processor: a thread with an event loop that takes due deliveries
from the outbox and sends up to ``concurrency`` of them at once.

It wakes when this process records a final status (the completion push; PostgreSQL also pushes
other processes' ends), when a try finishes, when the earliest pending delivery falls due, and
every ``poll_interval`` seconds otherwise (deliveries written by another process on SQLite).
Database calls run in worker threads so the loop never blocks; a try that outlives the hold of
its delivery lets another sender take it again, which is why receivers must expect duplicates
(same ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from imageproc._addresses import Address, Target
from imageproc._clock import Clock
from imageproc._events import Events, emit
from imageproc._protocols import DeliveryStore
from imageproc._task import Task
from imageproc.delivery._completions import Completions
from imageproc.delivery._outbox import Delivery, DeliveryStatus
from imageproc.delivery._sending import Attempt, Sender
from imageproc.delivery._webhooks import Webhooks

__all__ = ["Dispatcher"]

_T = TypeVar("_T")

logger = logging.getLogger("imageproc.webhooks")

#: Most seconds a taken delivery is held beyond the try's own deadline (as long again, up to
#: this) before another sender may take it: the margin covers recording the result.
_HOLD_MARGIN: Final = 30.0
#: Seconds between repairs: looks for final statuses recorded without their delivery (a
#: backend that can have such gaps has ``repair_deliveries``; PostgreSQL's burial can)...
_REPAIR_EVERY: Final = 60.0
#: ...over the statuses recorded since the last one, but for the youngest, which may still be
#: getting theirs...
_REPAIR_GRACE: Final = timedelta(seconds=60)
#: ...and, the first time, this far back.
_REPAIR_FIRST: Final = timedelta(hours=1)
#: Seconds to wait before looking again after the outbox could not be read.
_ERROR_PAUSE: Final = 2.0


class Dispatcher:
    """Sends the deliveries of ``store`` while started; see the module documentation."""

    def __init__(
        self,
        store: DeliveryStore,
        completions: Completions,
        settings: Webhooks,
        *,
        clock: Clock,
        events: Events,
        user_agent: str,
    ) -> None:
        self.store = store
        self.completions = completions
        self.settings = settings
        self.clock = clock
        self.events = events
        self._user_agent = user_agent
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._stop_timeout = settings.timeout
        self._next_repair = 0.0
        self._repaired_until: datetime | None = None
        # Threads of its own, not the loop's default pool: database calls must not wait behind
        # name lookups, and a lookup that hangs must not hold up other receivers' tries (a try
        # stops waiting at its deadline; its lookup thread ends when the resolver gives up).
        self._db_pool: ThreadPoolExecutor | None = None
        self._dns_pool: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """Whether the sender's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start sending in a thread of its own (returns once it listens for news)."""
        if self.running:
            return
        self._stopping.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="imageproc-webhooks", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking deliveries, give tries under way up to ``timeout`` seconds to finish
        (those that do not are taken again once their hold runs out), and end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._stop_timeout = timeout
        self._stopping.set()
        self._poke()
        thread.join(timeout + 5.0)
        if thread.is_alive():  # kept, so that no second sender starts beside it
            logger.warning("the webhook sender did not stop within %.0f s", timeout + 5.0)
            return
        self._thread = None

    def _heard(self, ended: Sequence[tuple[str, Task | None]] | None) -> None:
        """News from the completion push: wake for ends that may have written a delivery (a
        task with a callback URL, one only known by id, or "anything")."""
        if ended is None or any(t is None or t.callback_url for _, t in ended):
            self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    def _run(self) -> None:
        self._db_pool = ThreadPoolExecutor(2, thread_name_prefix="imageproc-webhooks-db")
        self._dns_pool = ThreadPoolExecutor(
            2 * self.settings.concurrency, thread_name_prefix="imageproc-webhooks-dns"
        )
        try:
            asyncio.run(self._main())
        except Exception:
            logger.exception("the webhook sender stopped on an error")
        finally:
            self._ready.set()
            for pool in (self._db_pool, self._dns_pool):
                pool.shutdown(wait=False, cancel_futures=True)

    async def _blocking(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` on the sender's database threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, functools.partial(fn, *args, **kwargs))

    async def _resolve(self, target: Target) -> list[Address]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._dns_pool, self.settings.allow.resolve, target)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        sender = Sender(self.settings, user_agent=self._user_agent, resolve=self._resolve)
        flying: set[asyncio.Task[None]] = set()
        try:
            # Hear other processes' ends too (PostgreSQL: LISTEN), as waiters do.
            await self._blocking(self.completions.activate, 5.0)
            with self.completions.watch(self._heard):
                self._ready.set()
                while not self._stopping.is_set():
                    self._wake.clear()
                    await self._repair_if_due()
                    free = self.settings.concurrency - len(flying)
                    taken = await self._take(free) if free > 0 else []
                    for delivery in taken:
                        task = asyncio.create_task(self._try(sender, delivery))
                        flying.add(task)
                        task.add_done_callback(self._landed(flying))
                    if taken and len(taken) == free:
                        continue  # there may be more due: look again at once
                    full = len(flying) >= self.settings.concurrency
                    await self._sleep(await self._pause(full))
            if flying:
                _, late = await asyncio.wait(flying, timeout=self._stop_timeout)
                for task in late:
                    task.cancel()
        finally:
            await sender.aclose()

    def _landed(self, flying: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            flying.discard(task)
            if self._wake is not None:
                self._wake.set()  # a slot is free

        return done

    async def _repair_if_due(self) -> None:
        """Every :data:`_REPAIR_EVERY` seconds, have the store write the deliveries that final
        statuses lack (if it can have such gaps at all)."""
        repair = getattr(self.store, "repair_deliveries", None)
        if not callable(repair) or time.monotonic() < self._next_repair:
            return
        self._next_repair = time.monotonic() + _REPAIR_EVERY
        now = self.clock()
        until = now - _REPAIR_GRACE
        last = self._repaired_until
        since = now - _REPAIR_FIRST if last is None else last - _REPAIR_GRACE
        try:
            await self._blocking(repair, since, until)
        except Exception:
            logger.exception("could not look for final statuses without their webhook")
            return
        self._repaired_until = until

    async def _take(self, limit: int) -> list[Delivery]:
        timeout = self.settings.timeout
        hold = timedelta(seconds=timeout + min(_HOLD_MARGIN, timeout))
        try:
            return await self._blocking(
                self.store.claim_deliveries, self.clock(), limit=limit, hold=hold
            )
        except Exception:
            logger.exception("could not take due webhook deliveries")
            await self._sleep(_ERROR_PAUSE)
            return []

    async def _pause(self, full: bool) -> float:
        """Seconds until there may be something to do, unless woken before (``full``: every
        slot is taken, and a landing try wakes the loop)."""
        pause = self.settings.poll_interval
        if full:
            return pause
        try:
            due = await self._blocking(self.store.next_delivery_at)
        except Exception:
            logger.exception("could not read when the next webhook is due")
            return _ERROR_PAUSE
        if due is not None:
            pause = min(pause, max(0.02, (due - self.clock()).total_seconds()))
        return pause

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        if self._stopping.is_set():
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _try(self, sender: Sender, delivery: Delivery) -> None:
        now = self.clock()
        attempt = await sender.send(delivery, now)
        settled = self._settled(delivery, attempt)
        try:
            recorded = await self._blocking(self.store.settle_delivery, settled)
        except Exception:
            logger.exception("could not record webhook %s's try", delivery.id)
            return
        if not recorded:
            logger.warning("webhook %s was taken again before its try ended", delivery.id)
            return
        outcome = _outcome(settled, attempt)
        if not attempt.delivered:
            logger.warning(
                "webhook %s for task %s, try %d: %s%s",
                delivery.id,
                delivery.task_id,
                delivery.attempts,
                attempt.error,
                "; dead" if outcome == "dead" else "",
            )
        emit(self.events, "delivered", settled, outcome, attempt.seconds)

    def _settled(self, delivery: Delivery, attempt: Attempt) -> Delivery:
        now = self.clock()
        if attempt.delivered:
            assert attempt.status_code is not None
            return delivery.succeeded(now, attempt.status_code)
        schedule = self.settings.schedule
        retry_at: datetime | None = None
        if not attempt.permanent and delivery.attempts < schedule.max_attempts:
            retry_at = now + timedelta(seconds=schedule.backoff(delivery.attempts))
        return delivery.failed(
            attempt.error or "failed", status_code=attempt.status_code, retry_at=retry_at
        )


def _outcome(delivery: Delivery, attempt: Attempt) -> str:
    if attempt.delivered:
        return "delivered"
    return "dead" if delivery.status == DeliveryStatus.DEAD else "retry"
