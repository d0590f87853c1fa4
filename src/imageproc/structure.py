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
from typing import Final

import attrs

from imageproc.errors import ImageTooLarge

__all__ = [
    "GifLayout",
    "JpegLayout",
    "check_jpeg",
    "check_png",
    "gif_layout",
    "is_gif",
    "is_jpeg",
    "is_png",
    "jpeg_end",
    "jpeg_layout",
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


def jpeg_layout(data: bytes, *, stop_after: int) -> JpegLayout:
    """Count a JPEG's marker segments and scans, stopping once either passes ``stop_after``.

    Follows the framing as a decoder does: a length after each marker, and after a start of scan
    the entropy-coded data up to the next marker. A file that breaks the framing ends the walk
    (the decoder will refuse it, or stop there too).
    """
    segments = scans = 0
    position, end = len(_JPEG_START), len(data)
    while segments <= stop_after and scans <= stop_after:
        # A marker, after any number of 0xFF fill bytes: skipped at once, not one by one.
        found = _MARKER.match(data, position)
        if found is None:
            break
        marker, position = found[0][-1], found.end()
        # Pillow reads markers, and each fill byte before one, in Python: a step apiece.
        segments += len(found[0]) - 2
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            segments += 1  # no length, but a step all the same: counted, so bounded
            continue
        if position + 2 > end:
            break
        (length,) = struct.unpack_from(">H", data, position)
        position += length
        segments += 1
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    return JpegLayout(segments, scans)


def jpeg_end(data: bytes) -> int:
    """Where a JPEG's first picture ends (just past its end-of-image marker); ``len(data)`` if
    it never does. What follows is another picture (an MPO's) or a trailer."""
    position = len(_JPEG_START)
    while True:
        found = _MARKER.match(data, position) or _NEXT_MARKER.search(data, position)
        if found is None:
            return len(data)
        marker, position = data[found.end() - 1], found.end()
        if marker == _EOI:
            return position
        if marker in _STANDALONE or position + 2 > len(data):
            continue
        (length,) = struct.unpack_from(">H", data, position)
        position += length
        if marker == _SOS:  # entropy-coded data up to the next marker
            following = _NEXT_MARKER.search(data, position)
            if following is None:
                return len(data)
            position = following.start()


def check_png(data: bytes, *, max_chunks: int) -> None:
    """Refuse with :class:`~imageproc.ImageTooLarge` a PNG of more than ``max_chunks`` chunks."""
    chunks = 0
    position, end = len(_PNG_SIGNATURE), len(data)
    while position + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > max_chunks:
            raise ImageTooLarge(f"PNG of more than {max_chunks} chunks")
        if kind == b"IEND":
            break
        position += 12 + length  # length, type, data, CRC


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
