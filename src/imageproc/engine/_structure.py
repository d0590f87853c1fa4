"""Walks of a file's structure, without decoding, that bound the work a decode would do.

A header says how many pixels an image has, but not how many times a decoder goes over them or
how many pieces it reads them in. A small file can hold a lot of either: a progressive JPEG with
thousands of scans (the decoder makes a pass over every block per scan), a JPEG or PNG split into
millions of tiny segments or chunks (Pillow reads each in Python), a GIF of thousands of frames.
These walks count those pieces by reading the file's framing only, so the cost of the walk is
bounded by the limit, or by one pass of a regular expression over the bytes, never by the decode.

Limits sit far above what real photographs reach: libjpeg's progressive script writes 10 scans
(6 for greyscale, 18 for CMYK), mozjpeg's scan optimisation a dozen or so; a PNG encoder writes
one IDAT per 8-64 KiB, a few thousand chunks in a 50 MB file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

import attrs

from imageproc.errors import ImageTooLarge

__all__ = [
    "GifLayout",
    "JpegLayout",
    "JpegMarker",
    "PngChunk",
    "check_jpeg",
    "check_png",
    "gif_layout",
    "is_gif",
    "is_jpeg",
    "is_png",
    "jpeg_end",
    "jpeg_layout",
    "jpeg_markers",
    "png_chunks",
]

_JPEG_START: Final = b"\xff\xd8"
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: The next marker after entropy-coded data: 0xFF followed by anything but a stuffed zero, a
#: restart marker (which belongs to the scan) or another 0xFF (fill).
_NEXT_MARKER: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: Markers without a length field.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
#: A marker: fill bytes (0xFF), then the marker's code.
_MARKER: Final = re.compile(rb"\xff+[^\xff]")
_SOS, _EOI = 0xDA, 0xD9


@attrs.frozen
class JpegLayout:
    """What :func:`jpeg_layout` found: marker segments (fill bytes before markers counted as
    one each: a reader steps over them one by one), and scans (start-of-scan segments)."""

    segments: int
    scans: int


def check_jpeg(data: bytes, *, max_scans: int, max_chunks: int) -> None:
    """Refuse with :class:`~imageproc.ImageTooLarge` a JPEG of more than ``max_scans`` scans or
    more than ``max_chunks`` marker segments; anything else is left to the decoder to judge."""
    layout = jpeg_layout(data, stop_after=max(max_scans, max_chunks))
    if layout.scans > max_scans:
        raise ImageTooLarge(
            f"JPEG of more than {max_scans} scans: every scan is a pass over the whole image,"
            f" and real photographs have at most 18 or so"
        )
    if layout.segments > max_chunks:
        raise ImageTooLarge(f"JPEG of more than {max_chunks} marker segments and fill bytes")


class JpegMarker(NamedTuple):
    """One marker of a JPEG, as :func:`jpeg_markers` meets it."""

    #: The marker's code (the byte after 0xFF): 0xD8 start of image, 0xDA start of scan, ….
    code: int
    #: 0xFF fill bytes right before it (a reader steps over them one by one).
    fill: int
    #: Where the marker (its 0xFF) begins, and where its segment ends: after the length and
    #: what it counts; right after the code for a marker without a length. A scan's entropy-
    #: coded data is not part of its segment.
    start: int
    end: int


def jpeg_markers(data: bytes) -> Iterator[JpegMarker]:
    """The markers of a JPEG's first picture in order, up to its end-of-image marker.

    Follows the framing as a decoder does: a length after each marker, and after a start of
    scan the entropy-coded data up to the next marker; bytes that are not a marker where one is
    due are skipped to the next, as libjpeg skips them. Each step is a regular-expression match
    or search, so the walk's time is linear in the data whatever it holds.
    """
    position = len(_JPEG_START)
    while True:
        found = _MARKER.match(data, position) or _NEXT_MARKER.search(data, position)
        if found is None:
            return
        code, after = data[found.end() - 1], found.end()
        if code == _EOI or code in _STANDALONE or after + 2 > len(data):
            yield JpegMarker(code, len(found[0]) - 2, found.end() - 2, after)
            if code == _EOI:
                return
            position = after
            continue
        (length,) = struct.unpack_from(">H", data, after)
        position = after + length
        yield JpegMarker(code, len(found[0]) - 2, found.end() - 2, position)
        if code == _SOS:  # entropy-coded data up to the next marker
            following = _NEXT_MARKER.search(data, position)
            if following is None:
                return
            position = following.start()


def jpeg_layout(data: bytes, *, stop_after: int) -> JpegLayout:
    """Count a JPEG's marker segments and scans (:func:`jpeg_markers`), stopping once either
    passes ``stop_after``."""
    segments = scans = 0
    for marker in jpeg_markers(data):
        # Pillow reads markers, and each fill byte before one, in Python: a step apiece.
        segments += marker.fill + (marker.code != _EOI)
        scans += marker.code == _SOS
        if segments > stop_after or scans > stop_after:
            break
    return JpegLayout(segments, scans)


def jpeg_end(data: bytes) -> int:
    """Where a JPEG's first picture ends (just past its end-of-image marker); ``len(data)`` if
    it never does. What follows is another picture (an MPO's) or a trailer."""
    for marker in jpeg_markers(data):
        if marker.code == _EOI:
            return marker.end
    return len(data)


class PngChunk(NamedTuple):
    """One chunk of a PNG, as :func:`png_chunks` meets it."""

    kind: bytes
    #: Where the chunk (its length field) begins and where it ends (after its CRC); its data
    #: lies between ``start + 8`` and ``end - 4``.
    start: int
    end: int


def png_chunks(data: bytes) -> Iterator[PngChunk]:
    """The chunks of a PNG in order, up to ``IEND`` (or the end of the data)."""
    position, end = len(_PNG_SIGNATURE), len(data)
    while position + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, position)
        chunk = PngChunk(kind, position, position + 12 + length)
        yield chunk
        if kind == b"IEND":
            return
        position = chunk.end


def check_png(data: bytes, *, max_chunks: int) -> None:
    """Refuse with :class:`~imageproc.ImageTooLarge` a PNG of more than ``max_chunks`` chunks."""
    for count, _ in enumerate(png_chunks(data), start=1):
        if count > max_chunks:
            raise ImageTooLarge(f"PNG of more than {max_chunks} chunks")


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts as a JPEG does."""
    return data[:3] == b"\xff\xd8\xff"


def is_png(data: bytes) -> bool:
    """Whether ``data`` starts with the PNG signature."""
    return data[:8] == _PNG_SIGNATURE


def is_gif(data: bytes) -> bool:
    """Whether ``data`` starts with a GIF signature."""
    return data[:6] in (b"GIF87a", b"GIF89a")


@attrs.frozen
class GifLayout:
    """What :func:`gif_layout` found."""

    #: Image descriptors in the file.
    frames: int
    #: The canvas Pillow decodes the first frame into, and the largest it grows to over all.
    first: tuple[int, int]
    canvas: tuple[int, int]


def gif_layout(data: bytes, *, max_chunks: int) -> GifLayout:
    """Walk a GIF's blocks as Pillow's reader does, without decoding: count the frames and find
    how large Pillow's canvas will grow.

    Every block, sub-block and stray byte is a step of the walk (and of Pillow's reader, in
    Python): refuses with :class:`~imageproc.ImageTooLarge` a file of more steps than
    ``max_chunks`` plus one per 200 bytes (image data comes in sub-blocks of 255 bytes), so the
    walk's time is bounded whatever the file holds.
    """
    budget = max_chunks + len(data) // 200
    width, height = struct.unpack_from("<HH", data, 6) if len(data) >= 10 else (0, 0)
    first: tuple[int, int] | None = None
    frames = steps = 0
    flags = data[10] if len(data) > 10 else 0
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    end = len(data)
    while position < end:
        steps += 1
        if steps > budget:
            raise ImageTooLarge(f"GIF of more than {budget} blocks")
        introducer = data[position]
        position += 1
        if introducer == 0x3B:  # trailer
            break
        if introducer == 0x21:  # extension: a label, then sub-blocks
            position, steps = _skip_sub_blocks(data, position + 1, steps, budget)
        elif introducer == 0x2C:  # image descriptor
            if position + 9 > end:
                break
            left, top, w, h, local = struct.unpack_from("<HHHHB", data, position)
            position += 9 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            # After the LZW code size.
            position, steps = _skip_sub_blocks(data, position + 1, steps, budget)
            width, height = max(width, left + w), max(height, top + h)
            frames += 1
            if first is None:
                first = (width, height)
        # Anything else is a stray byte, which Pillow skips one at a time too.
    return GifLayout(max(frames, 1), first or (width, height), (width, height))


def _skip_sub_blocks(data: bytes, position: int, steps: int, budget: int) -> tuple[int, int]:
    end = len(data)
    while position < end and data[position]:
        position += data[position] + 1
        steps += 1
        if steps > budget:
            raise ImageTooLarge(f"GIF of more than {budget} blocks")
    return position + 1, steps
