"""Storage keys: how they are made, and the rules every key must pass at the storage boundary.

A key is a relative, ``/``-separated path. Validation refuses anything that could reach outside
the storage root or be read differently by two backends, so a hostile key never gets as far as a
filesystem or an S3 call.
"""

from __future__ import annotations

import re
from typing import Final

from imageproc.errors import InvalidKey

__all__ = ["MAX_KEY_LENGTH", "output_key", "source_key", "validate_key"]

MAX_KEY_LENGTH: Final = 1024
# An allow-list, not a deny-list: no glob characters (fsspec expands them), no '~', ':', spaces
# or Unicode look-alikes, and no hidden '.' names. Every key imageproc makes fits it.
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative storage key; else :class:`~imageproc.InvalidKey`.

    Refused: empty or over-long keys, absolute paths, empty segments (``a//b``, a trailing ``/``),
    ``.`` or ``..`` segments, and any segment that is not ASCII letters, digits, ``.``, ``_`` and
    ``-`` (not starting with ``.``), which leaves out backslashes and control characters too.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("a storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"storage key longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise InvalidKey("storage key must be relative, not start with '/'")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"storage key has an empty, '.' or '..' segment: {key!r}")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(
                f"storage key segment {segment!r} must be ASCII letters, digits, '.', '_' or '-',"
                " not starting with '.'"
            )
    return key


def source_key(sha256: str, extension: str) -> str:
    """The content-addressed key of an original: the same bytes always land on the same key."""
    return f"originals/{sha256[:2]}/{sha256}.{extension}"


def output_key(task_id: str, variant: str, extension: str) -> str:
    """The deterministic key of one variant of one task: a retry overwrites, never duplicates."""
    return f"outputs/{task_id}/{variant}.{extension}"
