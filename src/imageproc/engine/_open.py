"""Opening an upload within :class:`ImageLimits`: :func:`open_checked` reads a header and refuses
what the limits do not allow before a pixel is decoded.

Every failure Pillow can report for a bad file is mapped to :class:`~imageproc.InvalidImage`
(:func:`mapped_errors`). Pillow's global ``Image.MAX_IMAGE_PIXELS`` is never read or changed: our
own limit is checked against the header before any pixel is decoded.

HEIF/HEIC is read through pillow-heif (the ``heif`` extra) when it is installed: it is imported and
registered with Pillow the first time an upload looks like one, never by ``import imageproc``.
"""

from __future__ import annotations

import importlib.util
import io
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import attrs
from PIL import Image, ImageCms, UnidentifiedImageError

from imageproc._formats import FORMATS as IMAGE_FORMATS
from imageproc.engine import _structure as structure
from imageproc.errors import ImageTooLarge, InvalidImage

__all__ = [
    "DEFAULT_FORMATS",
    "FORMAT_NAMES",
    "HEIF_AVAILABLE",
    "ImageLimits",
    "mapped_errors",
    "open_checked",
    "open_counted",
    "source_format",
]

#: Whether pillow-heif is installed; found without importing it.
HEIF_AVAILABLE: Final = importlib.util.find_spec("pillow_heif") is not None
#: Formats accepted as input by default (Pillow's names). AVIF is read by Pillow itself; HEIF only
#: with pillow-heif installed.
DEFAULT_FORMATS: Final = frozenset(
    f.pillow for f in IMAGE_FORMATS if f.pillow != "HEIF" or HEIF_AVAILABLE
)
#: Formats whose extra frames are an animation (decoded on request); the extra frames of a TIFF,
#: an MPO or a HEIF are other pictures, and only the first (primary) one is decoded.
_ANIMATED: Final = frozenset({"GIF", "WEBP", "PNG", "AVIF"})
#: Pillow opens a JPEG carrying an MPF index (most phone cameras) as "MPO": it is a JPEG to us.
FORMAT_NAMES: Final = {"MPO": "JPEG"}

#: Everything Pillow raises for a file it cannot read: a bad header, a truncated body, a bomb, a
#: broken colour profile. UserWarning and RuntimeWarning (DecompressionBombWarning is one) appear
#: here as exceptions only where warnings are made errors, and then they mean a bad file too.
_PILLOW_ERRORS: Final = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    ImageCms.PyCMSError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    ArithmeticError,
    RuntimeError,  # libavif reports a bad file so
    struct.error,
    UserWarning,
    RuntimeWarning,
)
_OBJECT_REPR: Final = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
#: How Pillow's DecompressionBombError states the size it was given.
_BOMB_SIZE: Final = re.compile(r"Image size \((\d+) pixels\)")


@attrs.frozen
class ImageLimits:
    """What an upload may be. Checked from the header, before any pixel is decoded."""

    #: Most pixels in one image, all frames of an animation together; imgproxy's default.
    max_pixels: int = 50_000_000
    #: Largest upload in bytes.
    max_bytes: int = 50 * 1024 * 1024
    #: Input formats accepted (Pillow's names, such as ``"JPEG"``).
    formats: frozenset[str] = attrs.field(default=DEFAULT_FORMATS, converter=frozenset)
    #: Most frames in one animation: each frame is a Python object as well as pixels, so a file
    #: of many tiny frames must be bounded by count as well as by pixels.
    max_frames: int = 1000
    #: Most scans in a progressive JPEG: the decoder makes a pass over the whole image per scan,
    #: so a small file of thousands of scans holds a worker for minutes. Real photographs have
    #: 6 to 18.
    max_scans: int = 100
    #: Most pieces a file is read in (JPEG marker segments, PNG chunks, GIF blocks beyond its
    #: image data): each is a step in Python. Real files have at most a few thousand.
    max_chunks: int = 100_000


@contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn any error Pillow raises for a bad file inside the block into
    :class:`~imageproc.InvalidImage` saying ``what: detail``."""
    try:
        yield
    except InvalidImage:
        raise
    except _PILLOW_ERRORS as error:
        raise InvalidImage(f"{what}{_plain_detail(error)}") from error


def _plain_detail(error: BaseException) -> str:
    """What to add to the refusal from Pillow's own words, if they say anything to a user (its
    text may name the in-memory file object or its internals; they stay in __cause__ and logs)."""
    text = _OBJECT_REPR.sub("the image", str(error)).strip()
    if isinstance(error, UnidentifiedImageError) or not text:
        return ""  # "cannot identify image file …": the refusal itself says it all
    if "truncated" in text.lower():
        return ": the file ends before the image does"
    return f": {text}"


_heif_lock = threading.Lock()
_heif_registered = False


def _register_heif() -> None:
    """Register pillow-heif's opener with Pillow, once, on the first upload that needs it."""
    global _heif_registered
    if _heif_registered:
        return
    with _heif_lock:
        if _heif_registered:
            return
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # pragma: no cover - installed but broken
            return
        register_heif_opener()
        _heif_registered = True


def _readable_formats(allowed: frozenset[str], data: bytes) -> tuple[str, ...]:
    # ISO base media files (HEIF, AVIF) start with an ftyp box; only those can need pillow-heif.
    if "HEIF" in allowed and data[4:8] == b"ftyp":
        _register_heif()
    # Pillow fails with a KeyError on a format name it has no plugin for; those cannot match.
    Image.init()
    return tuple(sorted(name for name in allowed if name in Image.OPEN))


def open_checked(data: bytes, limits: ImageLimits, *, all_frames: bool = True) -> Image.Image:
    """Open ``data`` lazily and check its header against ``limits``; no pixel is decoded.

    Refuses with :class:`~imageproc.InvalidImage` an empty or oversized upload, a format outside
    ``limits.formats``, a declared size of zero, and more pixels than ``limits.max_pixels`` (the
    frames of an animation count together unless ``all_frames`` is false) or more frames than
    ``limits.max_frames``; and, by walking the file's structure (``_structure``), a
    JPEG of more scans than ``limits.max_scans`` or a file in more pieces than
    ``limits.max_chunks``. The caller closes the returned image.
    """
    return open_counted(data, limits, all_frames=all_frames)[0]


def open_counted(data: bytes, limits: ImageLimits, *, all_frames: bool) -> tuple[Image.Image, int]:
    """:func:`open_checked`, and the number of frames to decode."""
    if not data:
        raise InvalidImage("empty upload")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"upload of {len(data)} bytes is over the limit of {limits.max_bytes}")
    frames: int | None = None
    if "GIF" in limits.formats and structure.is_gif(data):
        # Pillow allocates for a GIF's first frame while opening it (a frame may be larger than
        # the screen, and Pillow grows the canvas to hold it): check the whole file first.
        layout = structure.gif_layout(data, max_chunks=limits.max_chunks)
        frames = layout.frames if all_frames else 1
        _check_size(*(layout.canvas if all_frames else layout.first), frames, limits)
    elif "JPEG" in limits.formats and structure.is_jpeg(data):
        structure.check_jpeg(data, max_scans=limits.max_scans, max_chunks=limits.max_chunks)
    elif "PNG" in limits.formats and structure.is_png(data):
        structure.check_png(data, max_chunks=limits.max_chunks)
    formats = _readable_formats(limits.formats, data)
    with mapped_errors("not a readable image"):
        try:
            image = Image.open(io.BytesIO(data), formats=formats)
        except Image.DecompressionBombError as error:
            # Pillow refuses, before we can, a header declaring over twice its own default
            # limit: say ours, which is what the caller configured.
            declared = _BOMB_SIZE.search(str(error))
            size = f"of {declared[1]} pixels " if declared else ""
            raise ImageTooLarge(
                f"image {size}is over the limit of {limits.max_pixels} pixels"
            ) from error
        try:
            if frames is None or image.format != "GIF":
                frames = _frame_count(image) if all_frames else 1
            _check_size(image.width, image.height, frames, limits)
        except BaseException:
            image.close()
            raise
    return image, frames


def source_format(image: Image.Image) -> str:
    """Pillow's name of the format of an image opened by :func:`open_checked`, except that a
    JPEG with an MPF index (Pillow's "MPO", from most phone cameras) is called JPEG."""
    name = str(image.format)
    return FORMAT_NAMES.get(name, name)


def _frame_count(image: Image.Image) -> int:
    if image.format not in _ANIMATED or not getattr(image, "is_animated", False):
        return 1
    return int(getattr(image, "n_frames", 1))


def _check_size(width: int, height: int, frames: int, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise InvalidImage(f"image declares an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image of {width}x{height} pixels is over the limit of {limits.max_pixels} pixels"
        )
    if frames > limits.max_frames:
        raise ImageTooLarge(
            f"animation of {frames} frames is over the limit of {limits.max_frames} frames"
        )
    if width * height * frames > limits.max_pixels:
        raise ImageTooLarge(
            f"animation of {frames} frames of {width}x{height} pixels is over the limit of"
            f" {limits.max_pixels} pixels"
        )
