"""Storage errors as imageproc's, mapped where they leave the filesystem (also from a stream being
read), in messages that name the operation and the key but never a local path or URL (the
original is the ``__cause__``).

Not found is :class:`~imageproc.ObjectNotFound`; permission, bad request, bad credentials a
permanent :class:`~imageproc.StorageError`; timeouts, connection failures, 5xx and throttling a
transient one, which :class:`~imageproc.backends.fsspec.FsspecStorage` retries.
"""

from __future__ import annotations

import errno
import io
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from imageproc.errors import ImageprocError, ObjectNotFound, StorageError

__all__ = ["MappedReader", "describe", "is_retryable", "redact", "storage_error"]

_T = TypeVar("_T")

_USERINFO: Final = re.compile(r"(://)[^/@]*@")
#: OSError numbers that will not heal by trying again; any other OSError is treated as transient
#: (EIO from s3fs means "an S3 error it did not recognise", EBUSY means 503 or SlowDown).
_PERMANENT_ERRNOS: Final = frozenset(
    getattr(errno, name)
    for name in (
        "EACCES",
        "EPERM",
        "EROFS",
        "EINVAL",
        "ENOSYS",
        "ENAMETOOLONG",
        "EEXIST",
        "ENOTEMPTY",
        "EISDIR",
        "ENOTDIR",
        "ELOOP",
        "EMSGSIZE",
        "EREMCHG",
        "EFBIG",
    )
    if hasattr(errno, name)
)
_TRANSIENT_CODES: Final = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
    }
)


def storage_error(
    op: str, key: str, error: Exception, tell: Callable[[Exception], bool | None]
) -> ImageprocError:
    """The imageproc error for ``error`` raised by ``op`` on ``key``; ``tell`` says of a
    backend-specific error whether it is transient (None if it cannot tell)."""
    where = f"storage {op} of {key!r} failed: {describe(error)}"
    status, code = _http_response(error)
    missing = isinstance(error, FileNotFoundError | IsADirectoryError | NotADirectoryError)
    if missing or status == 404:
        if op in ("get", "open", "stat", "read"):
            return ObjectNotFound(f"no object under key {key!r}")
        # Writing where a directory (or bucket) is missing or in the way will not heal.
        return StorageError(where, transient=False)
    if isinstance(error, PermissionError) or status in (401, 403):
        return StorageError(where, transient=False)
    if isinstance(error, TimeoutError | ConnectionError):
        return StorageError(where, transient=True)
    if isinstance(error, OSError):
        return StorageError(where, transient=error.errno not in _PERMANENT_ERRNOS)
    if status is not None or code is not None:
        transient = code in _TRANSIENT_CODES or (
            status is not None and (status >= 500 or status in (408, 429))
        )
        return StorageError(where, transient=transient)
    known = tell(error)
    # Unknown failures count as transient (see imageproc.errors.is_transient); the retries
    # are bounded, so a bug costs a few quick tries, not a stuck worker.
    return StorageError(where, transient=True if known is None else known)


def _http_response(error: Exception) -> tuple[int | None, str | None]:
    """The HTTP status and error code an error carries (botocore's ClientError and lookalikes)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None, None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    return (
        status if isinstance(status, int) else None,
        str(code) if code else None,
    )


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, StorageError) and error.transient


def redact(url: str) -> str:
    """``url`` without any ``user:password@`` in it, for messages."""
    return _USERINFO.sub(r"\1***@", url)


def describe(error: BaseException) -> str:
    """Why an operation failed, without the exception's text (it may hold paths or URLs)."""
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number in errno.errorcode:
        return f"{type(error).__name__} ({errno.errorcode[number]})"
    return type(error).__name__


class MappedReader(io.RawIOBase):
    """A raw stream over an fsspec file whose errors leave as imageproc errors."""

    def __init__(self, file: Any, on_error: Callable[[Exception], ImageprocError]) -> None:
        super().__init__()
        self._file = file
        self._on_error = on_error

    def _guard(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return fn(*args)
        except ImageprocError:
            raise
        except Exception as error:
            raise self._on_error(error) from error

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self._file.seekable())

    def fileno(self) -> int:
        fileno: int = self._file.fileno()  # a local file has one; others raise as io does
        return fileno

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data: bytes = self._guard(self._file.read, len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        data: bytes = self._guard(self._file.read)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position: int = self._guard(self._file.seek, offset, whence)
        return position

    def tell(self) -> int:
        position: int = self._guard(self._file.tell)
        return position

    def close(self) -> None:
        if not self.closed:
            try:
                self._file.close()
            finally:
                super().close()
