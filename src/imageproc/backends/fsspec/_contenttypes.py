"""How an object's content type is known: S3 keeps it with the object; elsewhere it is the type
the key's extension implies (:data:`imageproc._formats.IMPLIED_TYPES`) unless a sidecar object
under ``.imageproc/content-type/<key>`` says otherwise.
"""

from __future__ import annotations

import mimetypes
import os
import re
from typing import Final

from imageproc._formats import IMPLIED_TYPES, UNKNOWN_TYPE

__all__ = [
    "CONTENT_TYPE",
    "CONTENT_TYPES",
    "RESERVED",
    "guess_type",
    "implied_type",
    "parse_content_type",
]

#: The first key segment of the storage's own bookkeeping, which keys never reach.
RESERVED: Final = ".imageproc"
#: Where the sidecars are, under the root: ``.imageproc/content-type/<key>``.
CONTENT_TYPES: Final = (RESERVED, "content-type")
#: Printable ASCII: what an HTTP header (S3's Content-Type) can carry without surprises.
CONTENT_TYPE: Final = re.compile(r"[!-~][ -~]{0,254}")


def implied_type(key: str) -> str | None:
    """The type the key's extension implies in the table, or None."""
    return IMPLIED_TYPES.get(os.path.splitext(key)[1].lower())


def guess_type(key: str) -> str:
    return implied_type(key) or mimetypes.guess_type(key)[0] or UNKNOWN_TYPE


def parse_content_type(raw: bytes, key: str) -> str:
    text = raw.decode("ascii", "replace").strip()
    return text if CONTENT_TYPE.fullmatch(text) else guess_type(key)
