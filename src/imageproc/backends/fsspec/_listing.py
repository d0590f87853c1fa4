"""Listing a folder of the storage through fsspec's ``find``: the objects under it, by key, with
their size and when each was last written, as each filesystem reports that time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

from imageproc._keys import validate_key
from imageproc._protocols import StoredObject
from imageproc.backends.fsspec._contenttypes import RESERVED
from imageproc.errors import InvalidKey

__all__ = ["find_objects", "modified_time"]

logger = logging.getLogger("imageproc.storage")

#: Where filesystems report when an object was last written, in the order they are tried: the
#: local one and sftp ``mtime`` (seconds), s3fs ``LastModified``, adlfs ``last_modified``,
#: gcsfs ``updated`` (ISO 8601 text); fsspec's memory filesystem only ``created``, which is the
#: last write there, since writing replaces the whole file.
_TIME_FIELDS: Final = ("mtime", "LastModified", "last_modified", "updated", "created")


def find_objects(fs: Any, root: str, prefix: str) -> list[StoredObject]:
    """The objects of the storage rooted at ``root`` on ``fs`` whose keys start with ``prefix``
    (``""`` or a folder such as ``originals/``, already checked).

    Left out: what is not an object a key can name (the storage's own bookkeeping under
    ``.imageproc/``, a local write's temporary file, anything whose name is not a valid key),
    symbolic links (imageproc never makes one), and objects whose filesystem reports no time
    they were written (their age is unknown, so they are never taken for old).
    """
    folder = "/".join((root, prefix.rstrip("/"))) if prefix else root
    start = f"{root}/"
    try:
        found: dict[str, dict[str, Any]] = fs.find(folder, detail=True)
    except FileNotFoundError:
        return []
    finally:
        # s3fs caches what find read; stat and exists must keep asking the store itself.
        fs.invalidate_cache(folder)
    objects: list[StoredObject] = []
    untimed = 0
    for path, info in found.items():
        if info.get("type", "file") != "file" or info.get("islink") or not path.startswith(start):
            continue
        key = path[len(start) :]
        if not key.startswith(prefix) or key.split("/", 1)[0] == RESERVED or not _is_key(key):
            continue
        modified = modified_time(info)
        if modified is None:
            untimed += 1
            continue
        objects.append(StoredObject(key, int(info.get("size") or 0), modified))
    if untimed:
        logger.warning(
            "storage listing: %d object(s) under %r have no modified time and were left out",
            untimed,
            prefix,
        )
    return objects


def modified_time(info: dict[str, Any]) -> datetime | None:
    """When the object ``info`` (an fsspec detail) describes was last written, in UTC, or None
    if the filesystem does not say."""
    for field in _TIME_FIELDS:
        value = info.get(field)
        if isinstance(value, datetime):
            # A naive time from a store is UTC: S3 and its kin speak nothing else.
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                continue
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return None


def _is_key(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True
