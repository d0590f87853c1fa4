"""A folder on this machine, through :mod:`os` rather than fsspec: keys resolved so that nothing
outside the folder is reached (symlinks included), and writes atomic and durable.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat as stat_module
from collections.abc import Callable
from contextlib import suppress
from typing import BinaryIO

from imageproc.backends.fsspec._contenttypes import (
    CONTENT_TYPES,
    guess_type,
    implied_type,
    parse_content_type,
)
from imageproc.backends.fsspec._drivers import Driver
from imageproc.backends.fsspec._errors import MappedReader
from imageproc.errors import ImageprocError, InvalidKey

__all__ = ["LocalDriver"]


class LocalDriver(Driver):
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
        return self._resolve(*CONTENT_TYPES, *key.split("/"))

    def write(self, key: str, data: bytes, content_type: str) -> None:
        path = self._data(key)
        sidecar = content_type != implied_type(key)
        # Most objects have no sidecar and get none: one look (through any links; it is only a
        # hint) finds there is none to remove, before resolving the sidecar's path properly.
        meta = None
        if sidecar or os.path.lexists(os.path.join(self.root, *CONTENT_TYPES, key)):
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
        return io.BufferedReader(MappedReader(open(self._data(key), "rb", buffering=0), on_error))

    def stat(self, key: str) -> tuple[int, str]:
        info = os.stat(self._data(key))
        if not stat_module.S_ISREG(info.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a file")
        try:
            with open(self._meta(key), "rb") as file:
                content_type = parse_content_type(file.read(256), key)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            content_type = guess_type(key)
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
