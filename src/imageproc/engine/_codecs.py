"""Decode and encode: the two ends of the engine, bytes in and bytes out, no I/O.

:func:`open_checked` reads a header and refuses what :class:`ImageLimits` does not allow before a
pixel is decoded. :func:`decode` turns an upload into :class:`Decoded` frames that every operation
can rely on: upright (EXIF orientation applied), in sRGB (embedded ICC profiles converted with
LittleCMS), and in one of four modes, ``RGB``, ``RGBA``, ``L`` or ``LA``; the metadata that
``keep-metadata`` may write back is kept aside in :class:`Metadata`. :func:`encode` writes frames
in an output :class:`~imageproc.Encoding`, as an animation where the format has them.

Every failure Pillow can report for a bad file is mapped to :class:`~imageproc.InvalidImage`
(:func:`mapped_errors`). Pillow's global ``Image.MAX_IMAGE_PIXELS`` is never read or changed: our
own limit is checked against the header before any pixel is decoded.

HEIF/HEIC is read through pillow-heif (the ``heif`` extra) when it is installed: it is imported and
registered with Pillow the first time an upload looks like one, never by ``import imageproc``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, Final, cast

import attrs
from PIL import ExifTags, Image, ImageCms, ImageFile, UnidentifiedImageError, features
from PIL.PngImagePlugin import PngInfo

from imageproc._errors import ConfigurationError, ImageTooLarge, InvalidImage, InvalidPipeline
from imageproc.engine import _structure as structure
from imageproc.pipeline._colour import WHITE, Colour
from imageproc.pipeline._encoding import Encoding

__all__ = [
    "DEFAULT_FORMATS",
    "HEIF_AVAILABLE",
    "Decoded",
    "ImageLimits",
    "Metadata",
    "check_side",
    "decode",
    "encode",
    "mapped_errors",
    "open_checked",
    "source_format",
]

#: Whether pillow-heif is installed; found without importing it.
HEIF_AVAILABLE: Final = importlib.util.find_spec("pillow_heif") is not None
#: Formats accepted as input by default (Pillow's names). AVIF is read by Pillow itself; HEIF only
#: with pillow-heif installed.
DEFAULT_FORMATS: Final = frozenset(
    {"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF", *(["HEIF"] if HEIF_AVAILABLE else [])}
)
#: Formats whose extra frames are an animation (decoded on request); the extra frames of a TIFF,
#: an MPO or a HEIF are other pictures, and only the first (primary) one is decoded.
_ANIMATED: Final = frozenset({"GIF", "WEBP", "PNG", "AVIF"})
#: Pillow opens a JPEG carrying an MPF index (most phone cameras) as "MPO": it is a JPEG to us.
_FORMAT_NAMES: Final = {"MPO": "JPEG"}

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

#: How to turn stored pixels upright, per EXIF orientation (the same table as ImageOps').
_UPRIGHT: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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
_SIXTEEN_BIT: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: Largest side each encoder can write; larger outputs are refused before encoding.
_MAX_SIDE: Final = {"JPEG": 65_500, "WEBP": 16_383, "GIF": 65_535}
#: Bytes a JPEG marker segment holds, and what the XMP one spends on its namespace.
_JPEG_MARKER: Final = 65_533
_XMP_NAMESPACE: Final = 29
#: Milliseconds per frame when an animation is encoded without durations.
_DEFAULT_DURATION: Final = 100


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


@attrs.frozen(eq=False)
class Decoded:
    """An upload decoded once: frames every operation can work on, and what to write back.

    Frames are upright, in sRGB, all in the same mode (``RGB``, ``RGBA``, ``L`` or ``LA``) and
    carry no metadata in ``Image.info``: that lives in :attr:`metadata`, so nothing leaks into an
    output by accident.
    """

    frames: tuple[Image.Image, ...]
    #: Milliseconds per frame; ``()`` for a still image.
    durations: tuple[int, ...]
    #: How many times an animation plays, 0 for forever (a GIF without a loop block plays once,
    #: one with Netscape loop count N plays N + 1 times, as browsers do); None for a still.
    loop: int | None
    #: Pillow's name of the source format, such as ``"JPEG"`` (an MPO is called JPEG).
    format: str
    metadata: Metadata

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the (upright) frames."""
        return self.frames[0].size


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
    return _open(data, limits, all_frames=all_frames)[0]


def _open(data: bytes, limits: ImageLimits, *, all_frames: bool) -> tuple[Image.Image, int]:
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
    return _FORMAT_NAMES.get(name, name)


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


def decode(
    data: bytes,
    limits: ImageLimits,
    *,
    draft: tuple[int, int] | None = None,
    all_frames: bool = True,
) -> Decoded:
    """Decode ``data`` into upright sRGB frames, checking ``limits`` from the header first.

    ``draft`` asks a JPEG to be decoded already shrunk by 1/2, 1/4 or 1/8, as long as the result
    still covers that size (given in the *stored* orientation, before EXIF turns it); other
    formats ignore it. ``all_frames=False`` decodes only the first frame of an animation.

    Raises :class:`~imageproc.InvalidImage` for anything unreadable, refused or corrupt.
    """
    image, frame_count = _open(data, limits, all_frames=all_frames)
    with image, mapped_errors("corrupt or truncated image"):
        pillow_format = str(image.format)
        if pillow_format in ("JPEG", "MPO"):
            if draft is not None:
                image.draft(None, (max(1, draft[0]), max(1, draft[1])))
            if isinstance(image, ImageFile.ImageFile):
                # Hand libjpeg the whole upload at once instead of Pillow's 64 KiB reads, each
                # joined to what the last left: 3 % of a shrunk decode. The data is in memory.
                image.decodermaxblock = max(image.decodermaxblock, len(data))
        image.load()
        profile = _Profile.read(image.info.get("icc_profile"))
        exif = image.getexif()
        orientation = exif.get(ExifTags.Base.Orientation)
        metadata = Metadata(
            exif=_upright_exif(exif),
            icc_profile=profile.output_bytes() if profile else None,
            xmp=_upright_xmp(image.info.get("xmp")),
        )
        if frame_count > 1:
            frames, durations = _decode_frames(image, frame_count, profile, limits)
            loop: int | None = _plays(pillow_format, image.info)
        else:
            frames, durations, loop = [_bare(_normalise(image, profile))], [], None
        transpose = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
        if transpose is not None:
            frames = [frame.transpose(transpose) for frame in frames]
    return Decoded(
        frames=tuple(frames),
        durations=tuple(durations),
        loop=loop,
        format=_FORMAT_NAMES.get(pillow_format, pillow_format),
        metadata=metadata,
    )


def _decode_frames(
    image: Image.Image, count: int, profile: _Profile | None, limits: ImageLimits
) -> tuple[list[Image.Image], list[int]]:
    frames: list[Image.Image] = []
    durations: list[int] = []
    pixels = 0
    for index in range(count):
        if index:
            try:
                image.seek(index)
            except EOFError:
                break  # fewer frames than declared: keep those there are
        # Count what each frame really is before its pixels are allocated (a GIF's canvas may
        # grow; its layout was checked, but this holds whatever a reader does).
        pixels += image.width * image.height
        if pixels > limits.max_pixels:
            raise ImageTooLarge(
                f"animation frames add up to more than the limit of {limits.max_pixels} pixels"
            )
        image.load()
        frame = _normalise(image, profile)
        # The next frame is decoded into (and composited onto) this one's memory: keep a copy.
        frames.append(_bare(image.copy() if frame is image else frame))
        durations.append(round(float(image.info.get("duration") or 0)))
    return _same_mode(frames), durations


def _plays(source_format: str, info: dict[str | tuple[int, int], Any]) -> int:
    """How many times an animation plays (0: forever), from Pillow's ``loop``."""
    loop = info.get("loop")
    if source_format == "GIF":
        # No Netscape block: once. Netscape N: repeat N more times (0: forever), as browsers do.
        if loop is None:
            return 1
        return 0 if int(loop) == 0 else int(loop) + 1
    # WebP and APNG store the number of plays itself.
    return int(loop or 0)


def _same_mode(frames: list[Image.Image]) -> list[Image.Image]:
    """Give every frame the same mode (a GIF's first frame may be opaque and later ones not)."""
    modes = {frame.mode for frame in frames}
    if len(modes) == 1:
        return frames
    alpha = bool(modes & {"RGBA", "LA"})
    gray = modes <= {"L", "LA"}
    target = ("LA" if alpha else "L") if gray else ("RGBA" if alpha else "RGB")
    return [frame if frame.mode == target else frame.convert(target) for frame in frames]


def _bare(image: Image.Image) -> Image.Image:
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


# --- colour --------------------------------------------------------------------------------------


@cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@cache
def _srgb_bytes() -> bytes:
    """LittleCMS's sRGB profile, dated 2000-01-01 so that outputs do not depend on the time the
    process made it (LittleCMS stamps the current time into the header)."""
    data = bytearray(_srgb().tobytes())
    data[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
    if any(data[84:100]):
        # An ICC v4 profile ID is the MD5 of the profile with flags, intent and ID zeroed.
        unsigned = bytearray(data)
        unsigned[44:48], unsigned[64:68], unsigned[84:100] = bytes(4), bytes(4), bytes(16)
        data[84:100] = hashlib.md5(unsigned).digest()
    return bytes(data)


@attrs.frozen
class _Profile:
    """An embedded ICC profile we can use: its colour space and whether it already is sRGB."""

    data: bytes
    cms: ImageCms.ImageCmsProfile
    space: str
    is_srgb: bool

    @classmethod
    def read(cls, data: object) -> _Profile | None:
        """Parse ``data``; None if absent or unreadable (a broken profile is ignored, as browsers
        do, rather than failing the image)."""
        if not isinstance(data, bytes) or not data:
            return None
        try:
            cms = ImageCms.ImageCmsProfile(io.BytesIO(data))
            space = cms.profile.xcolor_space.strip()
            description = cms.profile.profile_description or ""
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            return None
        return cls(data, cms, space, space == "RGB" and "srgb" in description.lower())

    def output_bytes(self) -> bytes | None:
        """The profile describing pixels after :func:`_to_srgb`."""
        if self.is_srgb:
            return self.data
        return _srgb_bytes() if self.space in ("RGB", "CMYK", "GRAY") else None


def _transform(profile: _Profile, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
    try:
        return ImageCms.buildTransform(
            profile.cms,
            _srgb(),
            in_mode,
            out_mode,
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        # A profile LittleCMS cannot use (no table for this direction, a corrupt tag): the
        # pixels are taken as they are, as a browser would.
        return None


def _to_srgb(image: Image.Image, profile: _Profile) -> Image.Image:
    """Convert ``image`` (RGB, RGBA, CMYK, L or LA) from ``profile`` to sRGB, keeping alpha."""
    if profile.is_srgb:
        return image
    if (image.mode in ("RGB", "RGBA") and profile.space == "RGB") or (
        image.mode == "CMYK" and profile.space == "CMYK"
    ):
        out_mode = "RGB" if image.mode == "CMYK" else image.mode
        transform = _transform(profile, image.mode, out_mode)
        if transform is None:
            return image
        return cast(Image.Image, ImageCms.applyTransform(image, transform))
    if image.mode in ("L", "LA") and profile.space == "GRAY":
        # LittleCMS has no sRGB-curve gray profile to target: go through sRGB RGB, which is gray
        # where R = G = B, and take the luma back.
        transform = _transform(profile, "L", "RGB")
        if transform is None:
            return image
        gray = image.getchannel("L") if image.mode == "LA" else image
        luma = cast(Image.Image, ImageCms.applyTransform(gray, transform)).convert("L")
        if image.mode == "LA":
            return Image.merge("LA", (luma, image.getchannel("A")))
        return luma
    return image


def _lab_to_srgb(image: Image.Image) -> Image.Image:
    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), _srgb(), "LAB", "RGB", ImageCms.Intent.PERCEPTUAL
    )
    return cast(Image.Image, ImageCms.applyTransform(image, transform))


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grayscale to ``L``, scaling the range instead of clipping it.

    ``point`` with a linear function runs in C (Pillow records the scale and offset).
    """
    if image.mode == "F":
        low, high = cast(tuple[float, float], image.getextrema())
        if low >= 0 and high <= 1:
            low, high = 0.0, 1.0  # the usual float convention
        elif low >= 0 and high <= 255:
            low, high = 0.0, 255.0
    elif image.mode in _SIXTEEN_BIT:
        low, high = 0.0, 65535.0
        if image.mode != "I;16":  # point() works on I;16 only of the 16-bit modes
            image = image.convert("I")
    else:
        if image.mode != "I":
            image = image.convert("I")
        low, high = (float(v) for v in cast(tuple[int, int], image.getextrema()))
        if low >= 0 and high <= 65535:
            low, high = 0.0, 65535.0  # 16-bit samples widened to I (signed 16-bit TIFF, …)
    scale = 255 / max(high - low, 1e-12)
    # + 0.5: the conversion to L truncates.
    scaled = image.point(lambda v: (v - low) * scale + 0.5)
    return scaled.convert("L")


def _normalise(image: Image.Image, profile: _Profile | None) -> Image.Image:
    """``image`` in sRGB and one of RGB, RGBA, L, LA. Returns ``image`` itself if it already is."""
    mode = image.mode
    if mode == "LAB":
        return _lab_to_srgb(image)
    if mode in ("L", "RGB") and image.info.get("transparency") is not None:
        # A PNG colour key (tRNS): make it a real alpha channel.
        image = image.convert("LA" if mode == "L" else "RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        palette = image.palette
        alpha = (
            mode == "PA"
            or "transparency" in image.info
            or (palette is not None and palette.mode == "RGBA")
        )
        image = image.convert("RGBA" if alpha else "RGB")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode in ("RGBX", "YCbCr", "HSV"):
        image = image.convert("RGB")
    elif mode in _SIXTEEN_BIT or mode in ("I", "F"):
        image = _to_eight_bit(image)
    elif mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if profile is not None:
        image = _to_srgb(image, profile)
    if image.mode == "CMYK":
        # No usable profile: Pillow's plain formula. (Adobe's inverted CMYK is already
        # un-inverted by Pillow's JPEG reader.)
        image = image.convert("RGB")
    return image


# --- metadata ------------------------------------------------------------------------------------


def _upright_exif(exif: Image.Exif) -> bytes | None:
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


def _upright_xmp(xmp: object) -> bytes | None:
    if isinstance(xmp, str):
        xmp = xmp.encode()
    if not isinstance(xmp, bytes) or not xmp:
        return None
    for pattern, replacement in _XMP_ORIENTATION:
        xmp = pattern.sub(replacement, xmp)
    return xmp


# --- encoding ------------------------------------------------------------------------------------


def check_side(encoding: Encoding, width: int, height: int) -> None:
    """Raise :class:`~imageproc.InvalidPipeline` if ``encoding`` (resolved) cannot hold a
    ``width`` x ``height`` image (JPEG, WebP and GIF have a largest side)."""
    limit = _MAX_SIDE.get(encoding.pillow_format)
    if limit is not None and max(width, height) > limit:
        raise InvalidPipeline(
            f"a {width}x{height} image is larger than {encoding.format} can hold"
            f" ({limit} pixels a side)"
        )


def encode(
    frames: Sequence[Image.Image],
    encoding: Encoding,
    *,
    durations: Sequence[int] = (),
    loop: int | None = None,
    background: Colour = WHITE,
    metadata: Metadata | None = None,
) -> bytes:
    """Write ``frames`` in ``encoding`` (resolved: never ``original``) and return the bytes.

    Several frames make an animation (GIF and WebP only) with ``durations`` in milliseconds
    (100 each if empty) and ``loop`` plays (0 or None: forever; see :attr:`Decoded.loop`).
    Transparency is kept where the format has it (GIF: on or off at half opacity) and flattened
    onto ``background`` where it has not (JPEG). Grayscale stays grayscale where the format has
    it (JPEG, PNG, AVIF, GIF, TIFF). ``metadata=None`` writes none (the frames are sRGB, so no
    profile is needed); otherwise its EXIF, ICC profile and XMP are written where the format can
    hold them (GIF holds none of them; TIFF no XMP).

    Raises :class:`~imageproc.InvalidPipeline` for an image larger than the format can hold,
    :class:`~imageproc.ConfigurationError` for AVIF from a Pillow built without it, and
    ``ValueError`` for a misuse (no frames, ``original``, an animation in a still format).
    """
    if encoding.format == "original":
        raise ValueError("resolve the encoding against the source format first")
    if not frames:
        raise ValueError("no frames to encode")
    if len(frames) > 1 and not encoding.animates:
        raise ValueError(f"{encoding.format} cannot hold {len(frames)} frames; pass one")
    if durations and len(durations) != len(frames):
        raise ValueError(f"{len(durations)} durations for {len(frames)} frames")
    pillow_format = encoding.pillow_format
    if pillow_format == "AVIF" and not features.check("avif"):
        raise ConfigurationError("this Pillow was built without AVIF support; cannot write avif")
    check_side(encoding, *frames[0].size)
    prepared = [_for_format(frame, pillow_format, background) for frame in frames]
    options = _options(encoding, prepared[0].mode, metadata)
    if len(prepared) > 1:
        options.update(
            save_all=True,
            append_images=prepared[1:],
            duration=list(durations) or [_DEFAULT_DURATION] * len(prepared),
        )
        plays = loop or 0
        if pillow_format == "GIF":
            # Pillow writes GIF's Netscape count, "repeat N more times"; none at all plays once.
            if plays != 1:
                options["loop"] = max(plays - 1, 0)
            if any("transparency" in frame.info for frame in prepared):
                # Frames are whole pictures: clear each before the next, or the previous frame
                # shows through the transparent parts.
                options["disposal"] = 2
        else:
            options["loop"] = plays
    buffer = io.BytesIO()
    prepared[0].save(buffer, pillow_format, **options)
    data = buffer.getvalue()
    if pillow_format == "WEBP" and len(prepared) > 1 and any(f.mode == "RGBA" for f in prepared):
        data = _flag_webp_alpha(data)
    return data


def _flag_webp_alpha(data: bytes) -> bytes:
    """Set the "has alpha" flag of an animated WebP.

    libwebp crops each frame to what changed, so an animation whose transparency lies only
    outside those rectangles is written without the flag, and decoders (Pillow's among them)
    then give opaque frames. The flag is a one-bit hint in the VP8X header, under no checksum.
    """
    if data[12:16] != b"VP8X":
        return data
    flagged = bytearray(data)
    flagged[20] |= 0x10
    return bytes(flagged)


def _options(encoding: Encoding, mode: str, metadata: Metadata | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    quality = encoding.effective_quality
    match encoding.pillow_format:
        case "JPEG":
            options.update(quality=quality, optimize=True, progressive=encoding.progressive)
        case "WEBP":
            # method 4: libwebp's default and a fair trade of speed for size.
            options.update(method=4)
            if encoding.lossless:
                options.update(lossless=True)
            else:
                options.update(quality=quality)
        case "AVIF":
            # libavif's speed 6 (Pillow's default) takes about 3.5 times as long as 8 for some
            # 6 % smaller files; imgproxy uses 9.
            options.update(quality=quality, speed=8)
        case "PNG":
            # zlib level 6 is most of level 9's gain at a fraction of its time; "optimize" would
            # try every filter and level.
            options.update(optimize=False, compress_level=6)
        case "GIF":
            # Our frames carry their own palettes and transparency index: leave them as they are.
            options.update(optimize=False)
        case "TIFF":
            if features.check("libtiff"):
                options.update(compression="tiff_deflate")
    if metadata is not None:
        options.update(_metadata_options(encoding.pillow_format, mode, metadata))
    return options


def _metadata_options(pillow_format: str, mode: str, metadata: Metadata) -> dict[str, Any]:
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


def _for_format(frame: Image.Image, pillow_format: str, background: Colour) -> Image.Image:
    """``frame`` in a mode ``pillow_format`` writes, without metadata in ``info``."""
    frame.load()
    if frame.mode not in ("RGB", "RGBA", "L", "LA"):
        frame = _normalise(frame, None)
    alpha = frame.mode in ("RGBA", "LA")
    if pillow_format == "JPEG" and alpha:
        frame = _flatten(frame, background)
    elif pillow_format == "WEBP" and frame.mode in ("L", "LA"):
        frame = frame.convert("RGBA" if alpha else "RGB")  # WebP has no grayscale
    elif pillow_format == "AVIF" and frame.mode == "LA":
        frame = frame.convert("RGBA")  # AVIF grayscale with alpha is not written by Pillow
    elif pillow_format == "GIF" and frame.mode != "L":
        return _for_gif(frame, background)
    return _bare(frame)


def _flatten(frame: Image.Image, background: Colour) -> Image.Image:
    """Composite ``frame`` (RGBA or LA) onto an opaque ``background``."""
    alpha = frame.getchannel("A")
    if frame.mode == "LA" and background.red == background.green == background.blue:
        canvas = Image.new("L", frame.size, background.red)
        canvas.paste(frame.getchannel("L"), mask=alpha)
        return canvas
    canvas = Image.new("RGB", frame.size, background.rgb)
    canvas.paste(frame if frame.mode == "RGBA" else frame.convert("RGB"), mask=alpha)
    return canvas


def _for_gif(frame: Image.Image, background: Colour) -> Image.Image:
    """A palette frame for GIF: 255 colours plus, for a frame with alpha, one transparent index
    for the pixels under half opacity (the rest is flattened onto ``background``)."""
    # Fast octree: some 50 times as fast as median cut (Pillow's default) on a 2 MP frame, for a
    # slightly larger file and a little more error.
    method = Image.Quantize.FASTOCTREE
    if frame.mode not in ("RGBA", "LA"):
        return _bare(frame.quantize(256, method))
    paletted = _flatten(frame, background).convert("RGB").quantize(255, method)
    clear = frame.getchannel("A").point(lambda a: 255 if a < 128 else 0)
    paletted.paste(255, mask=clear)
    palette = paletted.getpalette() or []
    paletted.putpalette(palette + [0] * (768 - len(palette)))
    paletted.info = {"transparency": 255}
    return paletted
