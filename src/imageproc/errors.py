"""Every error imageproc raises, rooted at :class:`ImageprocError`.

Each error knows whether it is *transient* (the same call may succeed if tried again: a storage
hiccup, a database restart) or *permanent* (trying again cannot help: not an image, a bad pipeline).
Workers use that to decide between retrying a task and failing it; the HTTP adapter uses ``code``
to choose a status. Errors from drivers (Pillow, fsspec, SQLAlchemy…) are mapped at the boundary
where they occur, with the original kept as ``__cause__``.

The tree::

    ImageprocError                      code                 transient
    ├── InvalidInput                    invalid_input        no
    │   ├── InvalidImage                invalid_image        no
    │   │   └── ImageTooLarge           image_too_large      no
    │   ├── InvalidPipeline             invalid_pipeline     no
    │   ├── InvalidKey                  invalid_key          no
    │   ├── IdempotencyConflict         idempotency_conflict no
    │   ├── UnsafeURL                   unsafe_url           no (yes if a name does not resolve)
    │   └── FetchFailed                 fetch_failed         no, unless raised with transient=True
    ├── ConfigurationError              configuration_error  no
    ├── OriginalGone                    original_gone        no
    ├── TaskNotFound                    task_not_found       no
    ├── IllegalTransition               illegal_transition   no
    ├── LeaseLost                       lease_lost           no
    ├── RenderTimeout                   render_timeout       no
    ├── RenderFailed                    render_failed        yes
    ├── QueueFull                       queue_full           yes
    ├── WaitTimeout (also TimeoutError) timeout              yes
    ├── StorageError                    storage_error        yes, unless raised with transient=False
    │   └── ObjectNotFound              object_not_found     no
    └── BackendUnavailable              backend_unavailable  yes
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "FetchFailed",
    "IdempotencyConflict",
    "IllegalTransition",
    "ImageprocError",
    "InvalidImage",
    "InvalidInput",
    "InvalidKey",
    "InvalidPipeline",
    "LeaseLost",
    "ObjectNotFound",
    "OriginalGone",
    "QueueFull",
    "RenderFailed",
    "RenderTimeout",
    "StorageError",
    "TaskNotFound",
    "UnsafeURL",
    "WaitTimeout",
    "is_transient",
]


class ImageprocError(Exception):
    """Root of every error imageproc raises.

    ``code`` is a stable machine-readable identifier (it is stored on failed tasks and returned by
    the HTTP API); ``transient`` says whether trying the same operation again may succeed.
    """

    code: ClassVar[str] = "error"
    #: The class default; an instance may override it (see :class:`StorageError`).
    default_transient: ClassVar[bool] = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = self.default_transient if transient is None else transient


class InvalidInput(ImageprocError):
    """The caller sent something that can never be processed as given."""

    code = "invalid_input"


class InvalidImage(InvalidInput):
    """The upload is empty, not an image, corrupt, truncated, too large or of a refused format."""

    code = "invalid_image"


class ImageTooLarge(InvalidImage):
    """The image is readable but has more pixels (all its frames together) or more frames than
    the configured limits allow. Over HTTP a 422: the upload is an image, of a size refused."""

    code = "image_too_large"


class InvalidPipeline(InvalidInput):
    """A pipeline (or preset name) that does not parse or breaks a configured limit."""

    code = "invalid_pipeline"


class InvalidKey(InvalidInput):
    """A storage key that is malformed or would reach outside the storage root."""

    code = "invalid_key"


class IdempotencyConflict(InvalidInput):
    """An idempotency key already remembered for a different request (another image,
    pipeline or option) of the same owner: nothing was stored. Over HTTP a 422."""

    code = "idempotency_conflict"


class UnsafeURL(InvalidInput):
    """A URL imageproc will not send to (or fetch from): not ``http``/``https``, malformed, or
    naming or resolving to an address that is not public (loopback, private, link-local,
    multicast, cloud metadata…) and not allowlisted. Over HTTP a 422. Raised with
    ``transient=True`` when the host does not resolve: not a refusal, and DNS may heal."""

    code = "unsafe_url"


class FetchFailed(InvalidInput):
    """An image URL that could not be fetched: the server answered an error, redirected too
    often, sent too many bytes, or did not answer in time. Transient (worth trying again) when
    the server failed or did not answer; over HTTP a 422, or a 502 when transient."""

    code = "fetch_failed"


class OriginalGone(ImageprocError):
    """A task's original is no longer stored (retention purged it), so nothing more can be made
    from it: reprocessing it is refused. Over HTTP a 410."""

    code = "original_gone"


class ConfigurationError(ImageprocError):
    """The Processor or a backend was set up with options that cannot work."""

    code = "configuration_error"


class TaskNotFound(ImageprocError):
    """No task has that id."""

    code = "task_not_found"


class IllegalTransition(ImageprocError):
    """A task was asked to move between two statuses the lifecycle does not connect."""

    code = "illegal_transition"


class LeaseLost(ImageprocError):
    """The worker's lease on a task expired or was taken over; its result must not be recorded."""

    code = "lease_lost"


class RenderTimeout(ImageprocError):
    """Rendering a task took longer than the processor's ``render_timeout``: its render process
    was killed. Permanent: the same image and pipeline would take as long again (a file built to
    cost a decoder minutes, or work too large for the deadline)."""

    code = "render_timeout"


class RenderFailed(ImageprocError):
    """The process rendering a task died (a crash in a decoder, killed for memory) or failed in
    a way that is not the image's fault; its log says more. Transient: a task that keeps failing
    so still ends in the dead-letter set after ``max_attempts``."""

    code = "render_failed"
    default_transient = True


class QueueFull(ImageprocError):
    """Recording the task would pass a limit on waiting tasks (all of them, or one owner's;
    :class:`~imageproc.QueueLimits`): nothing was recorded. Transient: it fits again once the
    workers have taken some. Over HTTP a 429 with ``Retry-After``."""

    code = "queue_full"
    default_transient = True


class WaitTimeout(ImageprocError, TimeoutError):
    """``Processor.wait`` gave up before the task reached a final status.

    It is also a :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """

    code = "timeout"
    default_transient = True


class StorageError(ImageprocError):
    """Storage could not read or write an object.

    Transient by default (timeouts, throttling, connection resets); raised with
    ``transient=False`` for failures that will not heal on their own, such as a permission error.
    """

    code = "storage_error"
    default_transient = True


class ObjectNotFound(StorageError):
    """No stored object has that key."""

    code = "object_not_found"
    default_transient = False


class BackendUnavailable(ImageprocError):
    """The task repository or queue cannot be reached right now (a lost connection, a restart)."""

    code = "backend_unavailable"
    default_transient = True


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth retrying.

    Errors that are not imageproc's own are treated as transient: they are most likely an
    infrastructure failure the backends did not map, and a task that keeps hitting one still ends in
    the dead-letter set after ``max_attempts``.
    """
    if isinstance(error, ImageprocError):
        return error.transient
    return True


def copies_for(error: Exception, callers: int) -> list[Exception]:
    """``error`` for the first of ``callers`` and a :func:`copy_of` it for each other one.

    For a failure several callers share (a batch that could not be recorded): one exception
    object raised in several threads or tasks at once would mix their tracebacks.
    """
    return [error, *(copy_of(error) for _ in range(callers - 1))]


def copy_of(error: Exception) -> Exception:
    """An equal, separate exception: an imageproc error as its own type (same message, same
    ``transient``); any other exception as a RuntimeError naming it, with it as the cause."""
    copy: Exception
    if isinstance(error, ImageprocError):
        copy = type(error)(error.message, transient=error.transient)
        copy.__cause__ = error.__cause__
    else:
        copy = RuntimeError(f"failed with the others of its batch: {error!r}")
        copy.__cause__ = error
    return copy
