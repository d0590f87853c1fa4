"""How imageproc retries: one :class:`RetryPolicy` value, and the one retry helper that execution
and storage share.

Two kinds of retry, both described by the policy:

* **in place**: a transient error from one call (a storage hiccup, a dropped connection) is
  tried again a few times at once, with short random exponential pauses (tenacity);
* **by requeueing**: an attempt that still fails transiently puts its task back in the queue with
  an exponential backoff and jitter, until ``max_attempts`` attempts have failed and the task is
  ``dead``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import tenacity

from imageproc.errors import ImageprocError

__all__ = ["RetryPolicy", "call_with_retries", "is_transient_imageproc_error"]

_T = TypeVar("_T")


def _at_least(low: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value >= low:  # written so that NaN is refused too
            raise ValueError(f"{attribute.name} must be at least {low:g}, got {value!r}")

    return check


def _whole(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be a whole number, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How often and how patiently a failing task, or a failing call, is tried again.

    Pass one as ``Processor(…, retry=RetryPolicy(…))``; storage backends take one too.
    """

    #: Attempts per task before one that keeps failing transiently is ``dead``.
    max_attempts: int = attrs.field(default=5, validator=[_whole, _at_least(1)])
    #: Seconds before the first requeued try; the delay doubles per failed attempt...
    backoff_base: float = attrs.field(default=2.0, validator=_at_least(0))
    #: ...up to this many seconds.
    backoff_max: float = attrs.field(default=600.0, validator=_at_least(0))
    #: The random share of each requeue delay, from 0 (none) to 1 (anywhere from 0 to the
    #: delay). The default, one half, keeps delays growing from one attempt to the next while
    #: tasks that failed together do not all come back together.
    jitter: float = attrs.field(default=0.5, validator=[_at_least(0), attrs.validators.le(1.0)])
    #: Tries of one call (a storage read or write, recording an outcome) within an attempt...
    in_place_tries: int = attrs.field(default=3, validator=[_whole, _at_least(1)])
    #: ...with random exponential pauses starting at up to this many seconds...
    in_place_wait: float = attrs.field(default=0.1, validator=_at_least(0))
    #: ...and never longer than this.
    in_place_max_wait: float = attrs.field(default=2.0, validator=_at_least(0))

    def replacing(self, **fields: float | None) -> RetryPolicy:
        """This policy with each field given a value (not None) replaced: what the keyword
        shortcuts of ``Processor`` and ``FsspecStorage`` make of their arguments."""
        given: dict[str, Any] = {name: v for name, v in fields.items() if v is not None}
        return attrs.evolve(self, **given)

    def backoff(self, attempt: int) -> float:
        """Seconds before the next try after attempt number ``attempt`` failed."""
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempt - 1))
        random_part = delay * self.jitter
        return delay - random_part + random.uniform(0, random_part)

    def call(
        self,
        fn: Callable[..., _T],
        *args: Any,
        retryable: Callable[[BaseException], bool] | None = None,
        logger: logging.Logger | None = None,
    ) -> _T:
        """``fn(*args)``, tried up to ``in_place_tries`` times while it raises a retryable error
        (by default a transient :class:`~imageproc.ImageprocError`)."""
        return call_with_retries(
            fn,
            *args,
            tries=self.in_place_tries,
            wait=self.in_place_wait,
            max_wait=max(self.in_place_wait, self.in_place_max_wait),
            retryable=retryable or is_transient_imageproc_error,
            logger=logger,
        )


def is_transient_imageproc_error(error: BaseException) -> bool:
    """Whether ``error`` is one of imageproc's that says trying again may work."""
    return isinstance(error, ImageprocError) and error.transient


def call_with_retries(
    fn: Callable[..., _T],
    *args: Any,
    tries: int,
    wait: float,
    max_wait: float,
    retryable: Callable[[BaseException], bool],
    logger: logging.Logger | None = None,
) -> _T:
    """Call ``fn(*args)``; while it raises an error ``retryable`` accepts, call it again after a
    random exponential pause, ``tries`` calls in all; then raise the last error."""
    # The first try runs bare: tenacity's machinery costs more CPU than a local storage call,
    # and almost every call succeeds. A failure is handed to tenacity as its first attempt, so
    # the tries, waits and stop are exactly those of a tenacity loop.
    try:
        return fn(*args)
    except Exception as error:
        if tries <= 1 or not retryable(error):
            raise
        first: list[Exception] = [error]

    def again(*args: Any) -> _T:
        if first:
            raise first.pop()
        return fn(*args)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),
        stop=tenacity.stop_after_attempt(tries),
        wait=tenacity.wait_random_exponential(multiplier=wait, max=max_wait),
        before_sleep=tenacity.before_sleep_log(logger, logging.WARNING) if logger else None,
        reraise=True,
    )
    return retrying(again, *args)
