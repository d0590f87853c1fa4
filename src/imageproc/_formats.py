"""The image formats imageproc knows, in one table: the names a pipeline writes, what Pillow calls
them, the extension a stored file gets and the content type it is served with.

The pipeline reads which formats it can encode to, the engine what a stored original is called,
and storage which content type a file's extension implies. Model: it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

__all__ = [
    "FORMATS",
    "IMPLIED_TYPES",
    "OUTPUT_FORMATS",
    "UNKNOWN_TYPE",
    "ImageFormat",
    "content_type_for",
    "extension_for",
]

#: The content type of bytes whose format is not known.
UNKNOWN_TYPE: Final = "application/octet-stream"


@attrs.frozen
class ImageFormat:
    """One image format."""

    #: As pipelines name it (``webp:q80``), when a pipeline can encode to it; else Pillow's
    #: name, lower-cased.
    name: str
    #: Pillow's name for it (``"WEBP"``).
    pillow: str
    #: File extensions, without the dot; the first is the one imageproc writes.
    extensions: tuple[str, ...]
    content_type: str
    #: A pipeline may encode to it.
    writable: bool = False

    @property
    def extension(self) -> str:
        """The extension a file of this format is stored under."""
        return self.extensions[0]


FORMATS: Final[tuple[ImageFormat, ...]] = (
    ImageFormat("jpeg", "JPEG", ("jpg", "jpeg"), "image/jpeg", writable=True),
    ImageFormat("png", "PNG", ("png",), "image/png", writable=True),
    ImageFormat("webp", "WEBP", ("webp",), "image/webp", writable=True),
    ImageFormat("avif", "AVIF", ("avif",), "image/avif", writable=True),
    ImageFormat("gif", "GIF", ("gif",), "image/gif", writable=True),
    ImageFormat("tiff", "TIFF", ("tiff", "tif"), "image/tiff", writable=True),
    ImageFormat("bmp", "BMP", ("bmp",), "image/bmp"),
    ImageFormat("heif", "HEIF", ("heic",), "image/heic"),
)
#: Types a stored file can have that imageproc itself neither reads nor writes (yet).
_OTHER_TYPES: Final = {".heif": "image/heif", ".jxl": "image/jxl"}

#: The formats a pipeline can encode to, by the name it uses for them.
OUTPUT_FORMATS: Final[Mapping[str, ImageFormat]] = {f.name: f for f in FORMATS if f.writable}

_BY_PILLOW: Final[Mapping[str, ImageFormat]] = {f.pillow: f for f in FORMATS}

#: The content type a file's extension (with its dot, lower case) implies.
IMPLIED_TYPES: Final[Mapping[str, str]] = {
    **{f".{extension}": f.content_type for f in FORMATS for extension in f.extensions},
    **_OTHER_TYPES,
}


def extension_for(pillow_format: str) -> str:
    """The file extension used for a stored original of this format (Pillow's name)."""
    known = _BY_PILLOW.get(pillow_format)
    return known.extension if known else pillow_format.lower()


def content_type_for(pillow_format: str) -> str:
    """The content type of a stored original of this format (Pillow's name)."""
    known = _BY_PILLOW.get(pillow_format)
    return known.content_type if known else UNKNOWN_TYPE
