"""Taking location data out of an original, without touching its pixels.

Phones write where a photo was taken into its EXIF (the GPS IFD), and editors copy it into XMP
(``exif:GPS…`` properties). An original is stored byte for byte, so with the processor's
``strip_location`` option :func:`strip_location` rewrites only those metadata blocks: the EXIF
without its GPS IFD (and without the thumbnail IFD, which Pillow does not write back), the XMP
without its GPS properties. The compressed pixels are copied as they are.

JPEG (APP1 segments; extended XMP is dropped whole, and of an MPO only the first picture is
kept, the others having EXIF of their own), PNG (``eXIf`` and XMP ``iTXt`` chunks; ImageMagick's
"Raw profile" text chunks are dropped) and WebP (``EXIF`` and ``XMP`` chunks) are rewritten. XMP
whose GPS properties cannot be taken out is refused (:class:`~imageproc.InvalidImage`). Other
formats (TIFF, AVIF, HEIF) keep their metadata inside structures that cannot be rewritten without
re-encoding: they are stored as they came.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Final

from PIL import Image

from imageproc.engine import _structure as structure
from imageproc.errors import InvalidImage

__all__ = ["REWRITTEN_FORMATS", "strip_location"]

#: Formats whose location data :func:`strip_location` removes.
REWRITTEN_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP"})

_GPS_IFD: Final = 0x8825
_SOS: Final = 0xDA
#: IFDs that Pillow writes back only if they were read: every one but GPS must be kept.
_KEPT_IFDS: Final = (0x8769, 0xA005)
_EXIF_HEADER: Final = b"Exif\x00\x00"
_XMP_HEADER: Final = b"http://ns.adobe.com/xap/1.0/\x00"
_EXTENDED_XMP: Final = b"http://ns.adobe.com/xmp/extension/\x00"
_MPF: Final = b"MPF\x00"
#: XMP's EXIF namespace, which holds the GPS properties, and the prefixes it is bound to.
_EXIF_NAMESPACE: Final = re.compile(
    rb"""xmlns:([A-Za-z][\w.-]{0,31})\s{0,8}=\s{0,8}["']http://ns\.adobe\.com/exif/1\.0/["']"""
)
#: Largest XMP packet taken apart; a bigger one (with location in it) is refused. Real packets
#: are a few kilobytes, and Photoshop's history a few hundred.
_MAX_XMP: Final = 4 * 1024 * 1024


def strip_location(data: bytes, pillow_format: str) -> bytes:
    """``data`` (an image in ``pillow_format``) without the location in its EXIF and XMP;
    ``data`` itself if it holds none, or if its format is not one of
    :data:`REWRITTEN_FORMATS`."""
    try:
        if pillow_format == "JPEG":
            return _jpeg(data)
        if pillow_format == "PNG":
            return _png(data)
        if pillow_format == "WEBP":
            return _webp(data)
    except (
        struct.error,
        zlib.error,
        ValueError,
        SyntaxError,
        OSError,
        KeyError,
        IndexError,
        TypeError,
    ) as error:
        # The header was read already, so this is metadata too broken to rewrite: refusing
        # the upload is safer than storing a location the caller asked us to remove.
        raise InvalidImage(f"metadata that cannot be read: {error}") from error
    return data


def _exif_without_gps(raw: bytes) -> bytes | None:
    """The EXIF block (with or without ``Exif\\0\\0``, given back the same way) without GPS;
    None if it has none."""
    exif = Image.Exif()
    exif.load(raw)
    if _GPS_IFD not in exif:
        return None
    for ifd in _KEPT_IFDS:
        exif.get_ifd(ifd)
    del exif[_GPS_IFD]
    rewritten = exif.tobytes()
    return rewritten if raw.startswith(_EXIF_HEADER) else rewritten[len(_EXIF_HEADER) :]


def _xmp_without_gps(xmp: bytes) -> bytes | None:
    """The XMP packet without its GPS properties, as attributes or as elements, under every
    prefix the EXIF namespace is bound to; None if it has none. Every pattern is bounded, so
    the time is linear in the packet; GPS properties that they cannot take out (malformed, or
    written in some other way) refuse the upload rather than stay."""
    if b"GPS" not in xmp:
        return None
    if len(xmp) > _MAX_XMP:
        raise ValueError(f"an XMP packet of {len(xmp)} bytes with location data")
    prefixes = {b"exif", *(found[1] for found in _EXIF_NAMESPACE.finditer(xmp))}
    stripped = xmp
    for prefix in sorted(prefixes):
        name = re.escape(prefix) + rb":GPS\w{0,40}"
        stripped = re.sub(
            rb"(?<=\s)" + name + rb"""\s{0,8}=\s{0,8}(?:"[^"<]{0,1024}"|'[^'<]{0,1024}')""",
            b"",
            stripped,
        )
        stripped = re.sub(
            rb"<(" + name + rb")\b[^<>]{0,1024}?(?:/>|>[^<]{0,1024}</\1\s{0,8}>)", b"", stripped
        )
        if re.search(re.escape(prefix) + rb":GPS", stripped):
            raise ValueError("location data in its XMP that could not be taken out")
    return None if stripped == xmp else stripped


# -- JPEG ---------------------------------------------------------------------------------------


def _jpeg(data: bytes) -> bytes:
    parts, copied, changed, pictures = [], 0, False, False
    for marker in structure.jpeg_markers(data):
        if marker.code == _SOS:  # the header is over: the rest is pixels
            break
        body = data[marker.start + 4 : marker.end]
        rewritten = None
        if marker.code == 0xE1 and body.startswith(_EXIF_HEADER):
            rewritten = _exif_without_gps(body)
        elif marker.code == 0xE1 and body.startswith(_XMP_HEADER):
            xmp = _xmp_without_gps(body[len(_XMP_HEADER) :])
            rewritten = None if xmp is None else _XMP_HEADER + xmp
        elif (marker.code == 0xE1 and body.startswith(_EXTENDED_XMP)) or (
            marker.code == 0xE2 and body.startswith(_MPF)
        ):
            # Extended XMP is one packet cut into pieces (a property may be cut in two): it
            # goes whole. The MPF index points at an MPO's other pictures, which go too.
            pictures = pictures or marker.code == 0xE2
            rewritten = b""
        if rewritten is None:
            continue
        if len(rewritten) + 2 > 0xFFFF:
            raise ValueError("rewritten segment too long")
        parts.append(data[copied : marker.start])
        if rewritten:
            parts.append(data[marker.start : marker.start + 2])
            parts.append(struct.pack(">H", len(rewritten) + 2) + rewritten)
        copied, changed = marker.end, True
    if not changed:
        return data
    # An MPO's other pictures (each with EXIF of its own) follow the first one's end.
    parts.append(data[copied : structure.jpeg_end(data) if pictures else len(data)])
    return b"".join(parts)


# -- PNG ----------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(data: bytes) -> bytes:
    parts, copied = [], 0
    for chunk in structure.png_chunks(data):
        body = data[chunk.start + 8 : chunk.end - 4]
        rewritten = None
        if chunk.kind == b"eXIf":
            exif = _exif_without_gps(body)
            rewritten = None if exif is None else _png_chunk(chunk.kind, exif)
        elif chunk.kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\x00"):
            rewritten = _png_itxt_xmp(body)
        elif chunk.kind in (b"tEXt", b"zTXt", b"iTXt") and body.lower().startswith(
            b"raw profile type"
        ):
            rewritten = b""  # ImageMagick's hex-encoded EXIF or XMP
        if rewritten is not None:
            parts.append(data[copied : chunk.start])
            parts.append(rewritten)
            copied = chunk.end
    if not parts:
        return data
    parts.append(data[copied:])
    return b"".join(parts)


def _png_itxt_xmp(body: bytes) -> bytes | None:
    # keyword \0 compression-flag compression-method language \0 translated \0 text
    keyword, rest = body.split(b"\x00", 1)
    flag, method, rest = rest[0], rest[1], rest[2:]
    language, translated, text = rest.split(b"\x00", 2)
    xmp = text
    if flag:  # compressed: a small chunk could inflate to gigabytes, so only so far
        inflater = zlib.decompressobj()
        xmp = inflater.decompress(text, _MAX_XMP + 1)
        if len(xmp) > _MAX_XMP:
            raise ValueError("an XMP packet that inflates past 4 MiB")
    stripped = _xmp_without_gps(xmp)
    if stripped is None:
        return None
    text = zlib.compress(stripped) if flag else stripped
    head = keyword + b"\x00" + bytes([flag, method]) + language + b"\x00" + translated + b"\x00"
    return _png_chunk(b"iTXt", head + text)


# -- WebP ---------------------------------------------------------------------------------------


def _webp(data: bytes) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return data
    parts, position, changed = [], 12, False
    while position + 8 <= len(data):
        kind, length = (
            data[position : position + 4],
            struct.unpack_from("<I", data, position + 4)[0],
        )
        end = position + 8 + length + (length & 1)
        body = data[position + 8 : position + 8 + length]
        rewritten = None
        if kind == b"EXIF":
            rewritten = _exif_without_gps(body)
        elif kind == b"XMP ":
            rewritten = _xmp_without_gps(body)
        if rewritten is None:
            parts.append(data[position:end])
        else:
            pad = b"\x00" if len(rewritten) & 1 else b""
            parts.append(kind + struct.pack("<I", len(rewritten)) + rewritten + pad)
            changed = True
        position = end
    if not changed:
        return data
    body = b"WEBP" + b"".join(parts)
    return b"RIFF" + struct.pack("<I", len(body)) + body
