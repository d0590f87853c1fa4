"""The storage on any fsspec filesystem: :class:`FsspecStorage` checks keys, maps errors and
retries transient ones around a driver for the filesystem its URL names (``_drivers``, ``_local``,
``_s3``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, BinaryIO, Final, TypeVar

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

from imageproc._keys import validate_key, validate_prefix
from imageproc._protocols import ObjectInfo, StoredObject
from imageproc._retrying import RetryPolicy
from imageproc.backends.fsspec._contenttypes import CONTENT_TYPE, RESERVED
from imageproc.backends.fsspec._drivers import Driver, FsspecDriver
from imageproc.backends.fsspec._errors import describe, is_retryable, redact
from imageproc.backends.fsspec._listing import find_objects
from imageproc.backends.fsspec._local import LocalDriver
from imageproc.backends.fsspec._s3 import S3Driver, is_s3, s3_options
from imageproc.errors import (
    ConfigurationError,
    ImageprocError,
    InvalidInput,
    InvalidKey,
)

__all__ = ["FsspecStorage"]

logger = logging.getLogger("imageproc.storage")

_T = TypeVar("_T")

#: SigV4 presigned URLs live at most a week.
_MAX_URL_SECONDS: Final = 7 * 24 * 3600

#: Storage calls go over a network: one more try, and longer pauses, than the policy's default.
_DEFAULT_RETRY: Final = RetryPolicy(in_place_tries=4, in_place_wait=0.1, in_place_max_wait=2.0)


class FsspecStorage:
    """A :class:`~imageproc.Storage` on any fsspec filesystem, named by a URL.

    ``url`` is ``file://path`` (or a bare path), ``memory://path``, ``s3://bucket/prefix`` or any
    URL of an installed fsspec protocol; objects live under that root. ``storage_options`` go to
    the filesystem. ``retry`` (a :class:`~imageproc.RetryPolicy`; its ``in_place_*`` fields)
    bounds the in-place retries of transient errors; ``retry_attempts`` (at least 1),
    ``retry_wait`` and ``retry_max_wait`` (seconds) are shortcuts for those fields. How keys
    are checked, where content types are kept, how local writes are made atomic and how errors
    are mapped and retried: the Backends page of the concepts documentation.

    Raises :class:`~imageproc.ConfigurationError` for an unknown protocol, a protocol whose
    package is not installed (``s3://`` needs the ``s3`` extra), an S3 URL without a bucket, or
    a local root that cannot be created.
    """

    #: It retries transient errors itself, within its bounds: a Processor does not retry its
    #: calls again (that would multiply the tries and the waits).
    retries_transient_errors: Final = True

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        retry_attempts: int | None = None,
        retry_wait: float | None = None,
        retry_max_wait: float | None = None,
        **storage_options: Any,
    ) -> None:
        if retry_attempts is not None and retry_attempts < 1:
            raise ConfigurationError("retry_attempts must be at least 1")
        if min(retry_wait or 0, retry_max_wait or 0) < 0:
            raise ConfigurationError("retry waits must not be negative")
        self._url = url
        #: How transient errors are retried in place (the ``in_place_*`` fields).
        self.retry = (retry or _DEFAULT_RETRY).replacing(
            in_place_tries=retry_attempts,
            in_place_wait=retry_wait,
            in_place_max_wait=retry_max_wait,
        )
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        if protocol in ("s3", "s3a"):
            storage_options = s3_options(storage_options)
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as error:
            extra = (
                " (install imageproc's 's3' extra: pip install '.[s3]' in a checkout)"
                if protocol in ("s3", "s3a")
                else ""
            )
            raise ConfigurationError(
                f"the {protocol!r} storage protocol needs a package that is not installed{extra}"
            ) from error
        except ValueError as error:
            raise ConfigurationError(
                f"unsupported storage URL {redact(url)!r} (protocol {protocol!r})"
            ) from error
        except Exception as error:
            # Some filesystems connect as they are built (ftp, sftp); nothing retries here, so
            # the application learns at start-up that its storage cannot be set up.
            raise ConfigurationError(
                f"cannot set up storage for {redact(url)!r}: {describe(error)}"
            ) from error
        #: The fsspec filesystem underneath (for inspection; writing around the storage skips
        #: its key checks and bookkeeping).
        self.fs: Any = fs
        #: The root every key is joined under, as the filesystem spells paths.
        self.root: str = root.rstrip("/")
        self._driver: Driver
        if isinstance(fs, LocalFileSystem):
            try:
                self._driver = LocalDriver(self.root)
            except OSError as error:
                raise ConfigurationError(
                    f"cannot create the storage folder for {url!r}: {describe(error)}"
                ) from error
        elif is_s3(fs):
            if not self.root:
                raise ConfigurationError(f"an S3 storage URL needs a bucket: {redact(url)!r}")
            # Our own instance (skip_instance_cache), so lowering its retries touches no one else.
            fs.retries = 1
            self._driver = S3Driver(fs, self.root)
        else:
            self._driver = FsspecDriver(fs, self.root)

    def __repr__(self) -> str:
        return f"FsspecStorage({redact(self._url)!r})"

    # -- the Storage protocol ---------------------------------------------------------------

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        """Store ``data`` under ``key`` with its content type, replacing any object there."""
        _check_key(key)
        if not isinstance(content_type, str) or not CONTENT_TYPE.fullmatch(content_type):
            raise InvalidInput("a content type must be 1-255 printable ASCII characters")
        data = bytes(data)
        self._run("put", key, lambda: self._driver.write(key, data, content_type))
        return ObjectInfo(key, len(data), content_type)

    def get(self, key: str) -> bytes:
        """The whole object under ``key``."""
        _check_key(key)
        return self._run("get", key, lambda: self._driver.read(key))

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable binary stream of the object under ``key``; the caller closes it.

        The object is read as the stream is read, not loaded at once. Opening is retried like any
        call; a failure while reading is mapped to the same errors but not retried.
        """
        _check_key(key)
        return self._run("open", key, lambda: self._driver.open(key, self._stream_error(key)))

    def stat(self, key: str) -> ObjectInfo:
        """Size and content type of the object under ``key``."""
        _check_key(key)
        size, content_type = self._run("stat", key, lambda: self._driver.stat(key))
        return ObjectInfo(key, size, content_type)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        _check_key(key)
        return self._run("exists", key, lambda: self._driver.exists(key))

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing object is not an error."""
        _check_key(key)
        self._run("delete", key, lambda: self._driver.delete(key))

    def url(self, key: str, *, expires: timedelta) -> str | None:
        """A presigned URL valid for ``expires`` (at most 7 days) on S3; None elsewhere.

        The URL is signed locally; it does not check that the object exists.
        """
        _check_key(key)
        seconds = int(expires.total_seconds())
        if not 1 <= seconds <= _MAX_URL_SECONDS:
            raise ValueError("expires must be between 1 second and 7 days")
        return self._run("url", key, lambda: self._driver.url(key, seconds))

    # -- listing (ListableStorage) ----------------------------------------------------------

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """The objects whose keys start with ``prefix`` (``""`` or a folder such as
        ``originals/``), each with its size and when it was last written, as the filesystem
        reports it (a local file's ``mtime``, an S3 object's ``LastModified``).

        The whole folder is listed before the first object is returned (fsspec's ``find``), and
        the listing is retried like any call; the storage's own bookkeeping, temporary files
        and symbolic links are left out, and so is any object whose filesystem reports no time.
        """
        validate_prefix(prefix)
        if prefix.split("/", 1)[0] == RESERVED:
            raise InvalidKey(f"storage keys under {RESERVED!r} are reserved for imageproc")
        where = prefix or "/"
        return iter(self._run("list", where, lambda: find_objects(self.fs, self.root, prefix)))

    # -- errors and retries -----------------------------------------------------------------

    def _run(self, op: str, key: str, call: Callable[[], _T]) -> _T:
        """Call ``call``, mapping its errors, retrying transient ones within the bounds."""

        def attempt() -> _T:
            try:
                return call()
            except ImageprocError:
                raise
            except Exception as error:
                raise self._driver.map_error(op, key, error) from error

        return self.retry.call(attempt, retryable=is_retryable, logger=logger)

    @property
    def retry_attempts(self) -> int:
        """Tries of each call (``retry.in_place_tries``)."""
        return self.retry.in_place_tries

    def _stream_error(self, key: str) -> Callable[[Exception], ImageprocError]:
        return lambda error: self._driver.map_error("read", key, error)


def _check_key(key: str) -> None:
    validate_key(key)
    # validate_key refuses hidden names already; checking here keeps the bookkeeping tree out of
    # reach even if the key rules change.
    if key.split("/", 1)[0] == RESERVED:
        raise InvalidKey(f"storage keys under {RESERVED!r} are reserved for imageproc")
