"""Drivers: what :class:`~imageproc.backends.fsspec.FsspecStorage` runs on one kind of
filesystem, by key; and the driver for any fsspec filesystem, with content types in sidecars.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from contextlib import suppress
from typing import Any, BinaryIO

from imageproc.backends.fsspec._contenttypes import (
    CONTENT_TYPES,
    guess_type,
    implied_type,
    parse_content_type,
)
from imageproc.backends.fsspec._errors import MappedReader, storage_error
from imageproc.errors import ImageprocError, InvalidKey

__all__ = ["Driver", "FsspecDriver"]


class Driver:
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
        return storage_error(op, key, error, self.transient)

    def transient(self, error: Exception) -> bool | None:
        """Whether a backend-specific ``error`` is transient, or None if this driver cannot tell."""
        return None


class FsspecDriver(Driver):
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
        return self._path(*CONTENT_TYPES, key)

    def write(self, key: str, data: bytes, content_type: str) -> None:
        path, meta = self._data(key), self._meta(key)
        with suppress(FileNotFoundError):
            self.fs.rm_file(meta)
        self.fs.pipe_file(path, data)
        if content_type != implied_type(key):
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
        return io.BufferedReader(MappedReader(file, on_error))

    def _info(self, key: str) -> dict[str, Any]:
        info: dict[str, Any] = self.fs.info(self._data(key))
        if info.get("type") != "file":
            raise FileNotFoundError(errno.ENOENT, "not a file")
        return info

    def stat(self, key: str) -> tuple[int, str]:
        size = int(self._info(key)["size"])
        try:
            content_type = parse_content_type(bytes(self.fs.cat_file(self._meta(key))), key)
        except FileNotFoundError:
            content_type = guess_type(key)
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
