"""The metadata ``keep-metadata`` writes back (:class:`Metadata`): EXIF and XMP made true for
upright pixels when an upload is decoded, written where the output format can hold them when a
variant is encoded; and :func:`bare`, which keeps it out of the images themselves so nothing leaks
into an output by accident.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final

import attrs
from PIL import ExifTags, Image, ImageFile
from PIL.PngImagePlugin import PngInfo

__all__ = ["Metadata", "bare", "metadata_options", "upright_exif", "upright_xmp"]

_XMP_ORIENTATION: Final = (
    (re.compile(rb'tiff:Orientation="[0-9]"'), b'tiff:Orientation="1"'),
    (
        re.compile(rb"<tiff:Orientation>[0-9]</tiff:Orientation>"),
        b"<tiff:Orientation>1</tiff:Orientation>",
    ),
)
_TIFF_LAYOUT_TAGS: Final = frozenset(
    {
        254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 284, 317, 320, 322,
        323, 324, 325, 338, 339, 347, 530, 700, 33723, 34377, 34675,
    }
)  # fmt: skip
#: Bytes a JPEG marker segment holds, and what the XMP one spends on its namespace.
_JPEG_MARKER: Final = 65_533
_XMP_NAMESPACE: Final = 29


@attrs.frozen
class Metadata:
    """The metadata ``keep-metadata`` writes back, made true for the decoded pixels."""

    #: EXIF in Pillow's form (``Exif\\0\\0`` and a TIFF structure), orientation reset to 1
    #: because the pixels are already upright; None if the source had none.
    exif: bytes | None = None
    #: The ICC profile of the decoded pixels: the sRGB profile if the source's was converted, the
    #: source's own if it already was sRGB, None if the source had none (or one we could not use).
    icc_profile: bytes | None = None
    #: The XMP packet, its ``tiff:Orientation`` reset to 1 like the EXIF; None if absent.
    xmp: bytes | None = None


def bare(image: Image.Image) -> Image.Image:
    """The same pixels in a plain Image with no ``info``, without copying them.

    A decoded ImageFile also holds its parser, its decoder and metadata that some encoders copy
    into outputs (TIFF copies XMP and IPTC from ``tag_v2``; PNG, TIFF and AVIF the ``info``
    profile); a plain Image sharing its pixel memory holds none of that, and the caller's image
    is left as it was. ``_new`` is Pillow's own way to wrap a core image.
    """
    if image.info or isinstance(image, ImageFile.ImageFile):
        image = image._new(image.im)
        image.info = {}
    return image


def upright_exif(exif: Image.Exif) -> bytes | None:
    # A TIFF's EXIF is its whole first directory: drop what describes its own pixel layout (and
    # the profile and XMP, kept apart), which would be false in any output.
    for tag in _TIFF_LAYOUT_TAGS & set(exif):
        del exif[tag]
    if not len(exif):
        return None
    if ExifTags.Base.Orientation in exif:
        exif[ExifTags.Base.Orientation] = 1
    try:
        return exif.tobytes()
    except (ValueError, TypeError, KeyError, struct.error, OSError):
        # EXIF Pillow can read but not write back: dropping it is the private choice anyway.
        return None


def upright_xmp(xmp: object) -> bytes | None:
    if isinstance(xmp, str):
        xmp = xmp.encode()
    if not isinstance(xmp, bytes) or not xmp:
        return None
    for pattern, replacement in _XMP_ORIENTATION:
        xmp = pattern.sub(replacement, xmp)
    return xmp


def metadata_options(pillow_format: str, mode: str, metadata: Metadata) -> dict[str, Any]:
    if pillow_format == "GIF":
        return {}
    options: dict[str, Any] = {}
    # A JPEG marker holds 65533 bytes: longer EXIF or XMP cannot be written there, and dropping
    # it beats failing the variant (Pillow splits only the profile over several markers).
    fits = _JPEG_MARKER if pillow_format == "JPEG" else None
    if metadata.exif and (fits is None or len(metadata.exif) <= fits):
        options["exif"] = metadata.exif
    icc = metadata.icc_profile
    # A profile must describe the output's colour space: sRGB's is RGB, and a grayscale output
    # without one is read as sRGB-gray anyway.
    space = b"GRAY" if mode in ("L", "LA") else b"RGB "
    if icc and icc[16:20] == space:
        options["icc_profile"] = icc
    if metadata.xmp and (fits is None or len(metadata.xmp) <= fits - _XMP_NAMESPACE):
        if pillow_format in ("JPEG", "WEBP", "AVIF"):
            options["xmp"] = metadata.xmp
        elif pillow_format == "PNG":
            info = PngInfo()
            info.add_itxt("XML:com.adobe.xmp", metadata.xmp.decode("utf-8", "replace"))
            options["pnginfo"] = info
    return options
