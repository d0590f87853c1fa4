"""Storage on fsspec: a local folder, fsspec's in-process memory, S3, or any installed protocol.

::

    FsspecStorage("file://./images")                    # a folder (created if missing)
    FsspecStorage("memory://scratch")                   # fsspec's process-wide memory filesystem
    FsspecStorage("s3://bucket/prefix")                 # S3 through s3fs (extra ``imageproc[s3]``)
    FsspecStorage("s3://bucket", endpoint_url="http://127.0.0.1:9000")   # MinIO and friends

Keyword arguments other than the ``retry_*`` ones are fsspec ``storage_options`` and go to the
filesystem unchanged (for S3 they are s3fs options: ``endpoint_url``, ``client_kwargs``,
``config_kwargs``, ``key``/``secret``, ``anon``, …).

**Keys.** Every method checks the key with :func:`imageproc._keys.validate_key` before anything
else and joins it under the root of the URL. On a local folder the joined path is then resolved
(:func:`os.path.realpath`) and must stay inside the resolved root, so a symlink inside the root
cannot be used to read or write outside it; every operation then acts on that resolved path. On
other filesystems the joined path is checked to mean to fsspec exactly what was joined (s3fs, for
instance, reads ``a?versionId=x`` as ``a``; today's key rules already refuse ``?``, this keeps the
guarantee if they loosen). The first segment ``.imageproc`` holds the storage's own bookkeeping;
keys never reach it (hidden names are refused, and this module refuses that segment itself too).

**Content types.** S3 keeps an object's ``Content-Type`` itself, so S3 uses it. Elsewhere an
object's type is the one its key's extension implies, from a fixed table in this module
(``.jpg`` → ``image/jpeg``, ``.webp`` → ``image/webp``, … every format imageproc stores), unless a
small sidecar object under ``.imageproc/content-type/<key>`` in the same root says otherwise.
``put`` writes a sidecar only when the caller's type differs from the implied one (a key without
an extension, or a type the caller chose): imageproc's own keys carry the extension of their
format, so storing an original or an output is one file, not two. The table is fixed rather than
:mod:`mimetypes` because the latter reads the machine's own ``mime.types``, and a type skipped on
one machine must read back the same on any other. Extended attributes exist neither on every
local filesystem nor on fsspec's memory or other backends, and a header inside the data file would
stop the folder from being a plain folder of images that anything can serve. ``put`` removes the
old sidecar before it writes the data and writes any new sidecar after it, so whatever a crash
interrupts, an object's type is never a stale one from an earlier object: at worst it is missing,
and a missing sidecar (also: files copied into the folder by hand) falls back to the extension
(the table, then :mod:`mimetypes`, then ``application/octet-stream``).

**Atomic writes.** On a local folder ``put`` writes a temporary file in the destination's own
directory, flushes and syncs it, then moves it over the key with :func:`os.replace` and syncs the
directory (and, for a directory it had to make, each new directory's parent); a failed or
interrupted write never leaves a partial object under the key (a crash can leave a hidden
``.imageproc-*.tmp`` file behind, never a half image). Object stores replace an object whole.

**Errors and retries.** Backend errors are mapped where they leave the filesystem: not found →
:class:`~imageproc.ObjectNotFound`; permission, bad request, bad credentials →
:class:`~imageproc.StorageError` with ``transient=False``; timeouts, connection failures, 5xx and
throttling → a transient :class:`~imageproc.StorageError`. Transient errors are retried here with
tenacity (``retry_attempts`` tries, random exponential waits from ``retry_wait`` up to
``retry_max_wait`` seconds). s3fs's and botocore's own retries are turned down to one attempt
unless configured otherwise, so that this one bounded policy is the only one. Error messages name
the operation and the key, never a local path or URL; the original exception is the ``__cause__``.

**S3 configuration** comes from botocore's usual chain: ``AWS_ACCESS_KEY_ID`` and friends,
profiles, instance roles; ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for an S3-compatible
server, or ``IMAGEPROC_S3_ENDPOINT_URL``, which takes precedence over those but not over an
``endpoint_url`` passed in. No credentials are needed in code. ``s3fs`` is imported only when an
``s3://`` storage is built, so this module imports without it.
"""

from __future__ import annotations

import errno
import io
import logging
import mimetypes
import os
import re
import secrets
import stat as stat_module
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from typing import Any, BinaryIO, Final, TypeVar

import fsspec  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

from imageproc._errors import (
    ConfigurationError,
    ImageprocError,
    InvalidInput,
    InvalidKey,
    ObjectNotFound,
    StorageError,
)
from imageproc._formats import IMPLIED_TYPES
from imageproc._keys import validate_key
from imageproc._protocols import ObjectInfo
from imageproc._retrying import RetryPolicy

__all__ = ["S3_ENDPOINT_ENV", "FsspecStorage"]

logger = logging.getLogger("imageproc.storage")

_T = TypeVar("_T")

#: The environment variable naming an S3-compatible endpoint for ``s3://`` storage.
S3_ENDPOINT_ENV: Final = "IMAGEPROC_S3_ENDPOINT_URL"

_RESERVED: Final = ".imageproc"
_CONTENT_TYPES: Final = (_RESERVED, "content-type")
_FALLBACK_TYPE: Final = "application/octet-stream"
#: Printable ASCII: what an HTTP header (S3's Content-Type) can carry without surprises.
_CONTENT_TYPE: Final = re.compile(r"[!-~][ -~]{0,254}")
_USERINFO: Final = re.compile(r"(://)[^/@]*@")
#: SigV4 presigned URLs live at most a week.
_MAX_URL_SECONDS: Final = 7 * 24 * 3600
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


#: Storage calls go over a network: one more try, and longer pauses, than the policy's default.
_DEFAULT_RETRY: Final = RetryPolicy(in_place_tries=4, in_place_wait=0.1, in_place_max_wait=2.0)


class FsspecStorage:
    """A :class:`~imageproc.Storage` on any fsspec filesystem, named by a URL.

    ``url`` is ``file://path`` (or a bare path), ``memory://path``, ``s3://bucket/prefix`` or any
    URL of an installed fsspec protocol; objects live under that root. ``storage_options`` go to
    the filesystem. ``retry`` (a :class:`~imageproc.RetryPolicy`; its ``in_place_*`` fields)
    bounds the in-place retries of transient errors; ``retry_attempts`` (at least 1),
    ``retry_wait`` and ``retry_max_wait`` (seconds) are shortcuts for those fields. See the
    module documentation for keys, content types, atomicity and errors.

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
            storage_options = _s3_options(storage_options)
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
                f"unsupported storage URL {_redact(url)!r} (protocol {protocol!r})"
            ) from error
        except Exception as error:
            # Some filesystems connect as they are built (ftp, sftp); nothing retries here, so
            # the application learns at start-up that its storage cannot be set up.
            raise ConfigurationError(
                f"cannot set up storage for {_redact(url)!r}: {_describe(error)}"
            ) from error
        #: The fsspec filesystem underneath (for inspection; writing around the storage skips
        #: its key checks and bookkeeping).
        self.fs: Any = fs
        #: The root every key is joined under, as the filesystem spells paths.
        self.root: str = root.rstrip("/")
        self._driver: _Driver
        if isinstance(fs, LocalFileSystem):
            try:
                self._driver = _LocalDriver(self.root)
            except OSError as error:
                raise ConfigurationError(
                    f"cannot create the storage folder for {url!r}: {_describe(error)}"
                ) from error
        elif _is_s3(fs):
            if not self.root:
                raise ConfigurationError(f"an S3 storage URL needs a bucket: {_redact(url)!r}")
            # Our own instance (skip_instance_cache), so lowering its retries touches no one else.
            fs.retries = 1
            self._driver = _S3Driver(fs, self.root)
        else:
            self._driver = _FsspecDriver(fs, self.root)

    def __repr__(self) -> str:
        return f"FsspecStorage({_redact(self._url)!r})"

    # -- the Storage protocol ---------------------------------------------------------------

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        """Store ``data`` under ``key`` with its content type, replacing any object there."""
        _check_key(key)
        if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
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

        return self.retry.call(attempt, retryable=_is_retryable, logger=logger)

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
    if key.split("/", 1)[0] == _RESERVED:
        raise InvalidKey(f"storage keys under {_RESERVED!r} are reserved for imageproc")


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, StorageError) and error.transient


def _is_s3(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "s3" in protocols


def _s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """The s3fs options: the caller's, plus the defaults the module documentation promises."""
    options = dict(options)
    client_kwargs = options.get("client_kwargs") or {}
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    if endpoint and not options.get("endpoint_url") and not client_kwargs.get("endpoint_url"):
        options["endpoint_url"] = endpoint
    config = dict(options.get("config_kwargs") or {})
    # One retry policy (ours) rather than three stacked ones, unless the caller chose botocore's.
    if "retries" not in config and "AWS_MAX_ATTEMPTS" not in os.environ:
        config["retries"] = {"total_max_attempts": 1}
    # Presigned URLs default to legacy SigV2 in us-east-1; AWS is retiring it.
    config.setdefault("signature_version", "s3v4")
    options["config_kwargs"] = config
    # Our own instance: fsspec would otherwise share it with anyone using the same options.
    options.setdefault("skip_instance_cache", True)
    return options


def _redact(url: str) -> str:
    """``url`` without any ``user:password@`` in it, for messages."""
    return _USERINFO.sub(r"\1***@", url)


def _implied_type(key: str) -> str | None:
    """The type the key's extension implies in the table, or None."""
    return IMPLIED_TYPES.get(os.path.splitext(key)[1].lower())


def _guess_type(key: str) -> str:
    return _implied_type(key) or mimetypes.guess_type(key)[0] or _FALLBACK_TYPE


def _parse_content_type(raw: bytes, key: str) -> str:
    text = raw.decode("ascii", "replace").strip()
    return text if _CONTENT_TYPE.fullmatch(text) else _guess_type(key)


def _describe(error: BaseException) -> str:
    """Why an operation failed, without the exception's text (it may hold paths or URLs)."""
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number in errno.errorcode:
        return f"{type(error).__name__} ({errno.errorcode[number]})"
    return type(error).__name__


# -- drivers: what differs between a local folder, an object store and any other filesystem ----


class _Driver:
    """The operations on one kind of filesystem, by key; :class:`FsspecStorage` validates keys,
    maps errors and retries around them."""

    def write(self, key: str, data: bytes, content_type: str) -> None:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def open(self, key: str, on_error: Callable[[Exception], ImageprocError]) -> BinaryIO:
        raise NotImplementedError

    def stat(self, key: str) -> tuple[int, str]:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def url(self, key: str, seconds: int) -> str | None:
        return None

    def map_error(self, op: str, key: str, error: Exception) -> ImageprocError:
        """The imageproc error for ``error`` raised by ``op`` on ``key``."""
        where = f"storage {op} of {key!r} failed: {_describe(error)}"
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
        known = self.transient(error)
        # Unknown failures count as transient (see imageproc._errors.is_transient); the retries
        # are bounded, so a bug costs a few quick tries, not a stuck worker.
        return StorageError(where, transient=True if known is None else known)

    def transient(self, error: Exception) -> bool | None:
        """Whether a backend-specific ``error`` is transient, or None if this driver cannot tell."""
        return None


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


class _LocalDriver(_Driver):
    """A folder on this machine, through :mod:`os` for atomic renames and symlink checks."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        # Resolved once: a root that is itself a symlink (/srv/images -> /mnt/images) is fine.
        self.root = os.path.realpath(root)

    def _resolve(self, *parts: str) -> str:
        # What os.path.realpath gives, with fewer system calls: the root is resolved already,
        # so only the key's own segments (valid ones: no "", "." or "..") are looked at, and
        # only while they exist (what does not exist cannot be a link). Any symbolic link on
        # the way sends the whole path through realpath and the containment check.
        path = self.root
        for index, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return os.path.join(path, *parts[index + 1 :])
            if stat_module.S_ISLNK(mode):
                return self._resolve_links(*parts)
        return path

    def _resolve_links(self, *parts: str) -> str:
        real = os.path.realpath(os.path.join(self.root, *parts))
        if real == self.root or os.path.commonpath([real, self.root]) != self.root:
            raise InvalidKey("storage key resolves outside the storage root (through a symlink)")
        return real

    def _data(self, key: str) -> str:
        return self._resolve(*key.split("/"))

    def _meta(self, key: str) -> str:
        return self._resolve(*_CONTENT_TYPES, *key.split("/"))

    def write(self, key: str, data: bytes, content_type: str) -> None:
        path = self._data(key)
        sidecar = content_type != _implied_type(key)
        # Most objects have no sidecar and get none: one look (through any links; it is only a
        # hint) finds there is none to remove, before resolving the sidecar's path properly.
        meta = None
        if sidecar or os.path.lexists(os.path.join(self.root, *_CONTENT_TYPES, key)):
            meta = self._meta(key)
            _unlink(meta)
        _atomic_write(path, data)
        if meta is not None and sidecar:
            _atomic_write(meta, content_type.encode("ascii"))

    def read(self, key: str) -> bytes:
        with open(self._data(key), "rb") as file:
            return file.read()

    def open(self, key: str, on_error: Callable[[Exception], ImageprocError]) -> BinaryIO:
        # Unbuffered underneath, so the BufferedReader around the error mapping is the only buffer.
        return io.BufferedReader(_MappedReader(open(self._data(key), "rb", buffering=0), on_error))

    def stat(self, key: str) -> tuple[int, str]:
        info = os.stat(self._data(key))
        if not stat_module.S_ISREG(info.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a file")
        try:
            with open(self._meta(key), "rb") as file:
                content_type = _parse_content_type(file.read(256), key)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            content_type = _guess_type(key)
        return info.st_size, content_type

    def exists(self, key: str) -> bool:
        try:
            info = os.stat(self._data(key))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat_module.S_ISREG(info.st_mode)

    def url(self, key: str, seconds: int) -> str | None:
        self._data(key)  # a key that leads out of the root is refused here too
        return None

    def delete(self, key: str) -> None:
        path = self._data(key)
        if os.path.isdir(path):
            return  # a directory is no object
        _unlink(path)
        _unlink(self._meta(key))


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(path)


def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    directory = os.path.dirname(path)
    # os.open rather than mkstemp: mkstemp makes the file 0600, but the object should get the
    # usual umask-based mode (a web server may serve the folder). O_EXCL never follows a link.
    temporary = os.path.join(directory, f".imageproc-{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(temporary, flags, 0o666)
    except FileNotFoundError:  # the directory is new: make it (one system call saved otherwise)
        _make_directories(directory)
        fd = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_directory(directory)


def _make_directories(directory: str) -> None:
    """Make ``directory`` and any missing parents, durably: each new directory's entry is synced
    in its parent, or a power loss could take a synced file away with the directory it is in."""
    missing = []
    parent = directory
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(directory, exist_ok=True)
    for made in reversed(missing):
        _sync_directory(os.path.dirname(made))


def _sync_directory(directory: str) -> None:
    """Make the rename itself durable; not every platform can open a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _FsspecDriver(_Driver):
    """Any fsspec filesystem, with content types in sidecar objects."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root

    def _path(self, *parts: str) -> str:
        path = "/".join((self.root, *parts))
        # fsspec parses some paths (chained URLs, "?versionId="); refuse a key that it would
        # read as anything but the path we joined.
        if self.fs._strip_protocol(path) != path:
            raise InvalidKey("storage key is not a plain path on this filesystem")
        return path

    def _data(self, key: str) -> str:
        return self._path(key)

    def _meta(self, key: str) -> str:
        return self._path(*_CONTENT_TYPES, key)

    def write(self, key: str, data: bytes, content_type: str) -> None:
        path, meta = self._data(key), self._meta(key)
        with suppress(FileNotFoundError):
            self.fs.rm_file(meta)
        self.fs.pipe_file(path, data)
        if content_type != _implied_type(key):
            self.fs.pipe_file(meta, content_type.encode("ascii"))

    def read(self, key: str) -> bytes:
        path = self._data(key)
        data = self.fs.cat_file(path)
        return bytes(data)

    def open(self, key: str, on_error: Callable[[Exception], ImageprocError]) -> BinaryIO:
        file = self.fs.open(self._data(key), "rb")
        details = getattr(file, "details", None)
        if isinstance(details, dict) and details.get("type", "file") != "file":
            file.close()
            raise FileNotFoundError(errno.ENOENT, "not a file")
        return io.BufferedReader(_MappedReader(file, on_error))

    def _info(self, key: str) -> dict[str, Any]:
        info: dict[str, Any] = self.fs.info(self._data(key))
        if info.get("type") != "file":
            raise FileNotFoundError(errno.ENOENT, "not a file")
        return info

    def stat(self, key: str) -> tuple[int, str]:
        size = int(self._info(key)["size"])
        try:
            content_type = _parse_content_type(bytes(self.fs.cat_file(self._meta(key))), key)
        except FileNotFoundError:
            content_type = _guess_type(key)
        return size, content_type

    def exists(self, key: str) -> bool:
        try:
            self._info(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        for path in (self._data(key), self._meta(key)):
            with suppress(FileNotFoundError):
                self.fs.rm_file(path)


class _S3Driver(_FsspecDriver):
    """S3 through s3fs: the content type is the object's own ``ContentType``."""

    def __init__(self, fs: Any, root: str) -> None:
        super().__init__(fs, root)
        self.bucket, _, prefix = root.partition("/")
        self.prefix = f"{prefix}/" if prefix else ""

    def _path(self, *parts: str) -> str:
        path = super()._path(*parts)
        if self.fs.split_path(path) != (self.bucket, self.prefix + "/".join(parts), None):
            raise InvalidKey("storage key is not a plain object key on S3")
        return path

    def write(self, key: str, data: bytes, content_type: str) -> None:
        self.fs.pipe_file(self._data(key), data, ContentType=content_type)

    def read(self, key: str) -> bytes:
        # max_concurrency=1: one GET; s3fs would otherwise HEAD first to plan ranged reads.
        return bytes(self.fs.cat_file(self._data(key), max_concurrency=1))

    def _head(self, key: str) -> dict[str, Any]:
        # One HEAD; fs.info would follow a 404 with a LIST to look for a "directory", which a
        # key (never ending in "/") cannot be.
        self._data(key)
        head: dict[str, Any] = self.fs.call_s3(
            "head_object", Bucket=self.bucket, Key=self.prefix + key
        )
        return head

    def stat(self, key: str) -> tuple[int, str]:
        head = self._head(key)
        return int(head["ContentLength"]), head.get("ContentType") or _guess_type(key)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        # S3 deletes a missing key without complaint, so a FileNotFoundError here means the
        # bucket itself is missing, which is worth reporting.
        self.fs.rm_file(self._data(key))

    def url(self, key: str, seconds: int) -> str | None:
        url: str = self.fs.url(self._data(key), expires=seconds)
        return url

    def transient(self, error: Exception) -> bool | None:
        from botocore import exceptions as boto  # type: ignore[import-untyped]

        if isinstance(error, boto.ConnectionError | boto.HTTPClientError):
            return True
        if isinstance(error, boto.BotoCoreError):
            return False  # missing credentials or region, invalid parameters: configuration
        return None


class _MappedReader(io.RawIOBase):
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
