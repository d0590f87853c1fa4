"""Storage keys: how they are made, and the rules every key must pass at the storage boundary.

A key is a relative, ``/``-separated path. Validation refuses anything that could reach outside
the storage root or be read differently by two backends, so a hostile key never gets as far as a
filesystem or an S3 call.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from imageproc.errors import InvalidKey

__all__ = [
    "MAX_KEY_LENGTH",
    "ORIGINALS",
    "OWNER_DIGEST_CHARS",
    "output_key",
    "source_key",
    "validate_key",
    "validate_prefix",
]

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


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is ``""`` or a folder of keys (valid key segments, each followed
    by ``/``, as in ``originals/``); else :class:`~imageproc.InvalidKey`. What a storage's
    listing takes."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise InvalidKey("a listing prefix must be empty or end with '/'")
    validate_key(prefix[:-1])
    return prefix


#: The folder every original's key is under (and nothing else's): what purge sweeps for originals
#: that no task refers to.
ORIGINALS: Final = "originals/"

#: Hex digits of the owner's SHA-256 in an original's key: 128 bits, so two owners' namespaces
#: never meet by chance.
OWNER_DIGEST_CHARS: Final = 32


def source_key(sha256: str, extension: str, owner: str | None = None) -> str:
    """The content-addressed key of an original: the same bytes of the same owner always land on
    the same key, ``originals/<owner digest>/<sha256[:2]>/<sha256>.<extension>``.

    Each owner has a namespace of their own (the first :data:`OWNER_DIGEST_CHARS` hex digits of
    the SHA-256 of the owner's name), so an upload never finds another owner's original already
    stored: how long it takes says nothing about what others uploaded. An owner's repeated upload
    still shares one original. Without an owner (None) the key is
    ``originals/<sha256[:2]>/<sha256>.<extension>``, shared by every owner-less upload, as
    before owners had namespaces; the two forms have different numbers of segments, so they
    never collide.
    """
    if owner is None:
        return f"{ORIGINALS}{sha256[:2]}/{sha256}.{extension}"
    # surrogatepass: any str an application passes as an owner has a digest, never an error.
    namespace = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{ORIGINALS}{namespace[:OWNER_DIGEST_CHARS]}/{sha256[:2]}/{sha256}.{extension}"


def output_key(task_id: str, variant: str, extension: str) -> str:
    """The deterministic key of one variant of one task: a retry overwrites, never duplicates."""
    return f"outputs/{task_id}/{variant}.{extension}"
