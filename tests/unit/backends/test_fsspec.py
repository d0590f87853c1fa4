"""FsspecStorage beyond the contract: faults and retries, and configuration (S3 itself is in
tests/integration/backends/test_fsspec_s3.py).

Transient and permanent faults are injected by a memory filesystem registered under its own
protocol (``imageproc-flaky://``), so they reach the storage through the same public route as
any installed fsspec protocol."""

from __future__ import annotations

import errno
import logging
import mimetypes
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fsspec
import pytest
from botocore.exceptions import ClientError
from fsspec.implementations.memory import MemoryFileSystem

from imageproc import (
    ConfigurationError,
    ObjectNotFound,
    Processor,
    StorageError,
    TaskStatus,
)
from imageproc.backends._memory import MemoryQueue, MemoryRepository
from imageproc.backends.fsspec import _local as fsspec_backend
from imageproc.backends.fsspec._listing import find_objects, modified_time
from imageproc.backends.fsspec._storage import FsspecStorage
from imageproc.testing import FAST_OPTIONS, sample_image

FLAKY = "imageproc-flaky"


def _memory_backends() -> tuple[MemoryQueue, MemoryRepository]:
    repository = MemoryRepository()
    return MemoryQueue(repository), repository


def _client_error(status: int, code: str) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


#: What a filesystem raises, by name: the transient kinds first, then the permanent ones.
ERRORS: dict[str, Callable[[], Exception]] = {
    "timeout": lambda: TimeoutError("timed out"),
    "reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "throttled": lambda: OSError(errno.EBUSY, "SlowDown"),  # s3fs's form of a 503
    "http-503": lambda: _client_error(503, "ServiceUnavailable"),
    "http-500": lambda: _client_error(500, "InternalError"),
    "permission": lambda: PermissionError(errno.EACCES, "Access Denied"),
    "http-403": lambda: _client_error(403, "AccessDenied"),
    "read-only": lambda: OSError(errno.EROFS, "Read-only file system"),
    "not-found": lambda: FileNotFoundError(errno.ENOENT, "No such file"),
}
TRANSIENT = ["timeout", "reset", "throttled", "http-503", "http-500"]
PERMANENT = ["permission", "http-403", "read-only"]


class FlakyMemoryFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """fsspec's memory filesystem whose next ``failures`` calls raise ``error`` (None: all)."""

    protocol = FLAKY

    def __init__(self, *, failures: int | None = 0, error: str = "timeout", **kwargs: Any):
        super().__init__(**kwargs)
        self.failures = failures
        self.error = error
        self.failed = 0
        self.calls: Counter[str] = Counter()

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str):
            path = path.removeprefix(f"{FLAKY}://")
        return super()._strip_protocol(path)

    def fail_next(self, failures: int | None, error: str | None = None) -> None:
        """Make the next ``failures`` calls fail (None: every call from now on)."""
        self.failures = None if failures is None else self.failed + failures
        self.error = error or self.error

    def _maybe_fail(self, method: str) -> None:
        self.calls[method] += 1
        if self.failures is None or self.failed < self.failures:
            self.failed += 1
            raise ERRORS[self.error]()

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("cat_file")
        return super().cat_file(path, *args, **kwargs)

    def pipe_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("pipe_file")
        return super().pipe_file(path, *args, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        self._maybe_fail("info")
        return super().info(path, **kwargs)

    def rm_file(self, path: str) -> Any:
        self._maybe_fail("rm_file")
        return super().rm_file(path)

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("find")
        return super().find(path, *args, **kwargs)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self._maybe_fail("open")
        file = super()._open(path, mode, **kwargs)
        if mode == "rb":
            return _FlakyFile(file, self)
        return file


class _FlakyFile:
    """A read stream whose reads go through the filesystem's failure switch."""

    def __init__(self, file: Any, fs: FlakyMemoryFileSystem) -> None:
        self._file = file
        self._fs = fs

    def read(self, *args: Any) -> Any:
        self._fs._maybe_fail("read")
        return self._file.read(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


fsspec.register_implementation(FLAKY, FlakyMemoryFileSystem, clobber=True)


@pytest.fixture
def flaky() -> Iterator[tuple[FsspecStorage, FlakyMemoryFileSystem]]:
    """A storage on a fresh flaky filesystem (no failures until a test asks for them)."""
    root = f"{FLAKY}://imageproc-tests/{secrets.token_hex(6)}"
    storage = FsspecStorage(
        root, retry_attempts=4, retry_wait=0.001, retry_max_wait=0.01, skip_instance_cache=True
    )
    fs = storage.fs
    assert isinstance(fs, FlakyMemoryFileSystem)
    yield storage, fs
    fs.fail_next(0)
    with suppress(FileNotFoundError):
        fs.rm(storage.root, recursive=True)


# -- transient, permanent and not-found failures ----------------------------------------------


@pytest.mark.parametrize("error", TRANSIENT)
def test_transient_failures_are_retried(
    flaky: tuple[FsspecStorage, FlakyMemoryFileSystem], error: str
) -> None:
    storage, fs = flaky
    operations: list[Callable[[], object]] = [
        lambda: storage.put("outputs/t/a.png", b"png", content_type="image/png"),
        lambda: storage.get("outputs/t/a.png"),
        lambda: storage.stat("outputs/t/a.png"),
        lambda: storage.exists("outputs/t/a.png"),
        lambda: storage.open("outputs/t/a.png").close(),
        lambda: storage.delete("outputs/t/a.png"),
    ]
    for operation in operations:
        before = fs.failed
        fs.fail_next(2, error)
        operation()
        assert fs.failed == before + 2
    assert not storage.exists("outputs/t/a.png")


def test_transient_failures_give_up_after_the_attempts(
    flaky: tuple[FsspecStorage, FlakyMemoryFileSystem],
) -> None:
    storage, fs = flaky
    fs.fail_next(None, "reset")
    with pytest.raises(StorageError) as failure:
        storage.get("k")
    assert failure.value.transient
    assert fs.calls["cat_file"] == storage.retry_attempts == 4
    assert isinstance(failure.value.__cause__, ConnectionResetError)


@pytest.mark.parametrize("error", PERMANENT)
def test_permanent_failures_surface_at_once(error: str) -> None:
    # Waits this long between tries would show at once if a permanent error were retried.
    storage = FsspecStorage(
        f"{FLAKY}://imageproc-tests/{secrets.token_hex(6)}",
        retry_wait=30,
        retry_max_wait=30,
        failures=None,
        error=error,
        skip_instance_cache=True,
    )
    fs = storage.fs
    started = time.monotonic()
    for operation in (
        lambda: storage.put("k.png", b"png", content_type="image/png"),
        lambda: storage.get("k.png"),
        lambda: storage.stat("k.png"),
        lambda: storage.delete("k.png"),
    ):
        with pytest.raises(StorageError) as failure:
            operation()
        assert not failure.value.transient
        assert type(failure.value) is StorageError
        assert "k.png" in failure.value.message
    assert time.monotonic() - started < 2
    assert fs.failed == 4  # one call each, no retries


def test_not_found_is_object_not_found_and_not_retried(
    flaky: tuple[FsspecStorage, FlakyMemoryFileSystem],
) -> None:
    storage, fs = flaky
    with pytest.raises(ObjectNotFound):
        storage.get("missing.png")
    assert fs.calls["cat_file"] == 1
    # Injected, too: whatever the filesystem says is missing is missing.
    fs.fail_next(1, "not-found")
    with pytest.raises(ObjectNotFound):
        storage.stat("missing.png")
    assert fs.calls["info"] == 1


def test_errors_while_streaming_are_mapped(
    flaky: tuple[FsspecStorage, FlakyMemoryFileSystem],
) -> None:
    storage, fs = flaky
    storage.put("a.png", b"png", content_type="image/png")
    with storage.open("a.png") as stream:
        fs.fail_next(1, "reset")
        with pytest.raises(StorageError) as failure:
            stream.read()
        assert failure.value.transient
        assert stream.read() == b"png"  # the stream itself is still usable


# -- content types -----------------------------------------------------------------------------


def _sidecars(storage: FsspecStorage) -> list[str]:
    """Every content-type sidecar the storage holds, as keys."""
    base = f"{storage.root}/.imageproc/content-type/"
    if not storage.fs.exists(base):
        return []
    return sorted(path.removeprefix(base) for path in storage.fs.find(base))


@pytest.fixture(params=["file", "memory"])
def plain(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[FsspecStorage]:
    """A storage with sidecars: a local folder, or fsspec's memory filesystem."""
    if request.param == "file":
        yield FsspecStorage(f"file://{tmp_path}/store")
        return
    storage = FsspecStorage(f"memory://imageproc-tests/{secrets.token_hex(6)}")
    yield storage
    with suppress(FileNotFoundError):
        storage.fs.rm(storage.root, recursive=True)


def test_no_sidecar_when_the_extension_implies_the_type(plain: FsspecStorage) -> None:
    implied = {
        "originals/ab/abcdef.jpg": "image/jpeg",
        "outputs/t/thumb.webp": "image/webp",
        "outputs/t/large.PNG": "image/png",
        "outputs/t/anim.gif": "image/gif",
        "outputs/t/scan.tiff": "image/tiff",
        "outputs/t/photo.avif": "image/avif",
        "originals/cd/cdef.heic": "image/heic",
    }
    for key, content_type in implied.items():
        plain.put(key, b"data", content_type=content_type)
    assert _sidecars(plain) == []
    for key, content_type in implied.items():
        assert plain.stat(key).content_type == content_type


def test_a_sidecar_when_the_type_is_not_the_implied_one(plain: FsspecStorage) -> None:
    plain.put("no-extension", b"data", content_type="image/avif")
    plain.put("a/b.png", b"data", content_type="image/webp")
    plain.put("c.jpg", b"data", content_type="image/JPEG")  # the caller's spelling is kept
    assert _sidecars(plain) == ["a/b.png", "c.jpg", "no-extension"]
    assert plain.stat("no-extension").content_type == "image/avif"
    assert plain.stat("a/b.png").content_type == "image/webp"
    assert plain.stat("c.jpg").content_type == "image/JPEG"


def test_replacing_with_the_implied_type_drops_the_old_sidecar(plain: FsspecStorage) -> None:
    plain.put("a/b.png", b"one", content_type="image/webp")
    plain.put("a/b.png", b"two", content_type="image/png")
    assert _sidecars(plain) == []
    assert plain.stat("a/b.png").content_type == "image/png"
    plain.delete("a/b.png")
    assert not plain.exists("a/b.png")


def test_implied_types_do_not_depend_on_the_machines_mimetypes(
    plain: FsspecStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A type written without a sidecar on one machine reads back the same on any other.
    plain.put("outputs/t/thumb.jpg", b"data", content_type="image/jpeg")
    plain.put("outputs/t/thumb.webp", b"data", content_type="image/webp")
    monkeypatch.setattr(mimetypes, "guess_type", lambda *args, **kwargs: ("text/x-odd", None))
    assert plain.stat("outputs/t/thumb.jpg").content_type == "image/jpeg"
    assert plain.stat("outputs/t/thumb.webp").content_type == "image/webp"


def test_processor_stores_originals_and_outputs_without_sidecars(plain: FsspecStorage) -> None:
    processor = Processor(plain, *_memory_backends(), **FAST_OPTIONS)
    task = processor.submit(sample_image(64, 48), "thumb=fit:32x32,webp;big=fit:48x48,png")
    processor.run_until_idle()
    done = processor.get(task.id)
    assert done.status == TaskStatus.SUCCEEDED
    assert _sidecars(plain) == []
    assert plain.stat(done.source_key).content_type == "image/jpeg"
    assert {plain.stat(o.key).content_type for o in done.outputs} == {"image/webp", "image/png"}


def test_new_directories_are_synced_into_their_parents(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FsspecStorage(f"file://{tmp_path}/store")
    root = os.path.realpath(tmp_path / "store")
    synced: list[str] = []
    monkeypatch.setattr(fsspec_backend, "_sync_directory", synced.append)
    storage.put("originals/ab/abcd.jpg", b"data", content_type="image/jpeg")
    # The parents of both new directories, top down, then the directory holding the object.
    assert synced == [root, f"{root}/originals", f"{root}/originals/ab"]
    synced.clear()
    storage.put("originals/ab/abce.jpg", b"data", content_type="image/jpeg")
    assert synced == [f"{root}/originals/ab"]


# -- configuration -----------------------------------------------------------------------------


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unsupported"):
        FsspecStorage("no-such-protocol://x")
    with pytest.raises(ConfigurationError, match="bucket"):
        FsspecStorage("s3://")
    with pytest.raises(ConfigurationError, match="retry_attempts"):
        FsspecStorage("memory://x", retry_attempts=0)
    # ftp connects as it is built; nothing listens on port 9. The password stays out of sight.
    with pytest.raises(ConfigurationError, match="cannot set up storage") as failure:
        FsspecStorage("ftp://user:hunter2@127.0.0.1:9/images", timeout=2)
    assert "hunter2" not in failure.value.message


def test_importing_needs_no_s3fs(tmp_path: Any) -> None:
    code = """
import sys
import imageproc
import imageproc.backends.fsspec._storage
S3 = {"s3fs", "botocore", "aiobotocore", "boto3", "aiohttp"}
assert not S3 & {name.split(".")[0] for name in sys.modules}, "an S3 package was imported"

class NoS3:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in S3:
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, NoS3())
from imageproc import ConfigurationError
from imageproc.backends.fsspec._storage import FsspecStorage
storage = FsspecStorage("memory://no-s3fs")
storage.put("k", b"x", content_type="image/png")
assert storage.get("k") == b"x"
try:
    FsspecStorage("s3://bucket/prefix")
except ConfigurationError as error:
    assert "'s3' extra" in error.message, error.message
else:
    raise AssertionError("no ConfigurationError")
"""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- listing ---------------------------------------------------------------------------------


def test_modified_times_are_read_as_each_filesystem_reports_them() -> None:
    moment = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert modified_time({"mtime": moment.timestamp(), "created": 0.0}) == moment  # local
    assert modified_time({"LastModified": moment.astimezone(plus_two)}) == moment  # s3fs
    assert modified_time({"LastModified": moment.replace(tzinfo=None)}) == moment  # naive: UTC
    assert modified_time({"updated": "2026-03-01T12:30:00Z"}) == moment  # gcsfs
    assert modified_time({"created": moment.timestamp()}) == moment  # fsspec's memory
    assert modified_time({"mtime": moment.timestamp()}).tzinfo is UTC  # type: ignore[union-attr]
    assert modified_time({"size": 3}) is None
    assert modified_time({"updated": "yesterday"}) is None


class _UntimedFilesystem:
    """A filesystem whose listing says nothing of when objects were written."""

    def __init__(self) -> None:
        self.invalidated: list[str] = []

    def find(self, path: str, *, detail: bool) -> dict[str, dict[str, Any]]:
        return {
            f"{path}/ab/x.jpg": {"type": "file", "size": 3},
            f"{path}/ab/y.jpg": {"type": "file", "size": 4, "mtime": 1.0},
        }

    def invalidate_cache(self, path: str) -> None:
        self.invalidated.append(path)


def test_objects_without_a_time_are_left_out_of_a_listing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fs = _UntimedFilesystem()
    with caplog.at_level(logging.WARNING, logger="imageproc.storage"):
        found = find_objects(fs, "bucket/root", "originals/")
    assert [stored.key for stored in found] == ["originals/ab/y.jpg"]
    assert "1 object(s) under 'originals/' have no modified time" in caplog.text
    # What find read is not kept: a later stat must ask the store.
    assert fs.invalidated == ["bucket/root/originals"]


def test_a_listing_error_is_mapped_and_retried(
    flaky: tuple[FsspecStorage, FlakyMemoryFileSystem],
) -> None:
    storage, fs = flaky
    storage.put("originals/ab/x.jpg", b"x", content_type="image/jpeg")
    fs.fail_next(2, "timeout")
    assert [s.key for s in storage.list_objects("originals/")] == ["originals/ab/x.jpg"]
    assert fs.calls["find"] == 3
    fs.fail_next(None, "permission")
    with pytest.raises(StorageError) as failure:
        storage.list_objects("originals/")
    assert not failure.value.transient
    assert "storage list of 'originals/' failed: PermissionError" in str(failure.value)
