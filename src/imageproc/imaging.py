"""The Pillow engine: read an image header safely, then make every variant from one decode.

Pure functions, bytes in and bytes out, no I/O. Every failure Pillow can report for a bad file is
mapped here to :class:`~imageproc.InvalidImage`, so nothing above this module sees a Pillow error.
Pillow's global ``Image.MAX_IMAGE_PIXELS`` is never read or changed: our own limit is checked
against the header before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import attrs
from PIL import Image, ImageOps, UnidentifiedImageError

from imageproc import transforms
from imageproc.errors import InvalidImage, InvalidPipeline
from imageproc.pipeline import Fill, Fit, Operation, Pad, Pipeline, Resize, Variant
from imageproc.task import SourceInfo

__all__ = ["ImageLimits", "Rendered", "probe", "render"]

#: Formats accepted as input by default (Pillow's names).
DEFAULT_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"})
#: File extensions for stored originals, by Pillow format.
_EXTENSIONS: Final = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tiff"}
_CONTENT_TYPES: Final = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
}
#: Everything Pillow raises for a file it cannot read: a bad header, a truncated body, a bomb.
_PILLOW_ERRORS: Final = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
)


@attrs.frozen
class ImageLimits:
    """What an upload may be. Checked from the header, before any pixel is decoded."""

    #: Most pixels (width x height) in one image; imgproxy's default.
    max_pixels: int = 50_000_000
    #: Largest upload in bytes.
    max_bytes: int = 50 * 1024 * 1024
    #: Input formats accepted (Pillow's names, such as ``"JPEG"``).
    formats: frozenset[str] = attrs.field(default=DEFAULT_FORMATS, converter=frozenset)


@attrs.frozen
class Rendered:
    """One encoded variant, ready to store."""

    name: str
    format: str
    content_type: str
    extension: str
    width: int
    height: int
    data: bytes
    #: With the variant's ``placeholder`` option: a BlurHash and the dominant colour.
    blurhash: str | None = None
    dominant_color: str | None = None


_OBJECT_REPR: Final = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def extension_for(pillow_format: str) -> str:
    """The file extension used for a stored original of this format."""
    return _EXTENSIONS.get(pillow_format, pillow_format.lower())


def content_type_for(pillow_format: str) -> str:
    """The MIME type of a stored original of this format."""
    return _CONTENT_TYPES.get(pillow_format, "application/octet-stream")


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    try:
        yield
    except InvalidImage:
        raise
    except _PILLOW_ERRORS as error:
        # Pillow's text may name the in-memory file object; keep it in __cause__ and the logs.
        detail = _OBJECT_REPR.sub("the upload", str(error)) or type(error).__name__
        raise InvalidImage(f"{what}: {detail}") from error


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise InvalidImage("empty upload")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"upload of {len(data)} bytes is over the limit of {limits.max_bytes}")
    with _mapped_errors("not a readable image"):
        image = Image.open(io.BytesIO(data), formats=sorted(limits.formats))
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image declares an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"image of {width}x{height} pixels is over the limit of {limits.max_pixels} pixels"
        )
    return image


def probe(data: bytes, limits: ImageLimits | None = None) -> SourceInfo:
    """Read the header of ``data`` and check it against ``limits`` without decoding pixels.

    Raises :class:`~imageproc.InvalidImage` for an empty, unreadable, oversized or refused image.
    """
    limits = limits or ImageLimits()
    with _open(data, limits) as image:
        return SourceInfo(
            format=str(image.format),
            width=image.width,
            height=image.height,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )


def _decode(data: bytes, limits: ImageLimits, pipeline: Pipeline) -> Image.Image:
    with _open(data, limits) as image, _mapped_errors("corrupt or truncated image"):
        if image.format == "JPEG":
            upright = shrink_target(pipeline, *_upright_size(image))
            if upright is not None:
                image.draft(image.mode, _stored_size(image, upright))
        image.load()
        # In place: a transposed copy would double peak memory for every upright image.
        ImageOps.exif_transpose(image, in_place=True)
        return image


_TURNED: Final = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(0x0112, 1) or 1)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if _orientation(image) in _TURNED else (width, height)


def _stored_size(image: Image.Image, upright: tuple[int, int]) -> tuple[int, int]:
    return (upright[1], upright[0]) if _orientation(image) in _TURNED else upright


def _first_scale(variant: Variant, width: int, height: int) -> float | None:
    """How much the variant's first operation scales a ``width`` x ``height`` source down, or
    None if it needs full resolution (no scaling first, or a crop, rotate or filter first)."""
    if not variant.operations:
        return None
    first = variant.operations[0]
    if isinstance(first, Fit | Resize):
        target = first.target_size(width, height, upscale=variant.upscale)
        return max(target[0] / width, target[1] / height)
    if isinstance(first, Fill):
        target = first.target_size(width, height, upscale=variant.upscale)
        return max(target[0] / width, target[1] / height)  # cover: the larger ratio
    if isinstance(first, Pad):
        inner = Fit(first.width, first.height).target_size(width, height, upscale=variant.upscale)
        return max(inner[0] / width, inner[1] / height)
    return None


def shrink_target(pipeline: Pipeline, width: int, height: int) -> tuple[int, int] | None:
    """The smallest upright size a decoder may shrink the source to on load and still give every
    variant full quality, or None if some variant needs every pixel.

    Each variant's first scaling must still be a reduction by at least ``REDUCING_GAP`` from the
    shrunk image, so the final LANCZOS pass has the margin it would have from the full decode.
    """
    needed = 0.0
    for variant in pipeline.variants:
        scale = _first_scale(variant, width, height)
        if scale is None or scale * transforms.REDUCING_GAP >= 1:
            return None
        needed = max(needed, scale * transforms.REDUCING_GAP)
    return math.ceil(width * needed), math.ceil(height * needed)


def _for_encoding(image: Image.Image, pillow_format: str) -> Image.Image:
    """Convert to a mode the encoder can write, flattening transparency onto white for JPEG."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if pillow_format == "JPEG":
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return image if image.mode in ("RGB", "L") else image.convert("RGB")
    if has_alpha:
        return image if image.mode == "RGBA" else image.convert("RGBA")
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def _encode(image: Image.Image, variant: Variant) -> Rendered:
    encoding = variant.encoding
    image = _for_encoding(image, encoding.pillow_format)
    options: dict[str, object] = {}
    if encoding.effective_quality is not None:
        options["quality"] = encoding.effective_quality
    if encoding.format == "jpeg":
        options["optimize"] = True
    buffer = io.BytesIO()
    image.save(buffer, encoding.pillow_format, **options)
    return Rendered(
        name=variant.name,
        format=encoding.format,
        content_type=encoding.content_type,
        extension=encoding.extension,
        width=image.width,
        height=image.height,
        data=buffer.getvalue(),
    )


def check_output_sizes(pipeline: Pipeline, width: int, height: int, limits: ImageLimits) -> None:
    """Refuse a pipeline that would make any image, intermediate or final, of more pixels than
    ``limits.max_pixels`` from a ``width`` x ``height`` source, whichever way EXIF turns it.

    A small source and ``resize:…,upscale`` could otherwise ask for gigabytes.
    """
    for w, h in {(width, height), (height, width)}:
        for variant in pipeline.variants:
            size = (w, h)
            for operation in variant.operations:
                size = operation.target_size(*size, upscale=variant.upscale)
                if size[0] * size[1] > limits.max_pixels:
                    raise InvalidPipeline(
                        f"variant {variant.name!r} would make a {size[0]}x{size[1]} image from"
                        f" this {width}x{height} source, over the limit of {limits.max_pixels}"
                        " pixels"
                    )


def render(
    data: bytes,
    pipeline: Pipeline,
    limits: ImageLimits | None = None,
    *,
    stage: Callable[[str, float], None] | None = None,
) -> list[Rendered]:
    """Decode ``data`` once, upright it from EXIF, and encode every variant of ``pipeline``.

    The decode shrinks a JPEG on load as far as every variant allows (see :func:`shrink_target`),
    and larger variants are made first so smaller ones can start from them. ``stage``, if given,
    is told how long the ``decode``, ``transform`` and ``encode`` stages took. Raises
    :class:`~imageproc.InvalidImage` if the image cannot be decoded, and
    :class:`~imageproc.InvalidPipeline` if a variant would be larger than the pixel limit.
    """
    limits = limits or ImageLimits()
    timer = _Timer(stage)
    with timer("decode"):
        with _open(data, limits) as header, _mapped_errors("corrupt or truncated image"):
            upright = _upright_size(header)
        check_output_sizes(pipeline, *upright, limits)
        source = _decode(data, limits, pipeline)
    with timer("transform"):
        made = _variants(source, upright, pipeline)
    with timer("encode"):
        return [_encode(made[variant.name], variant) for variant in pipeline.variants]


class _Timer:
    def __init__(self, report: Callable[[str, float], None] | None) -> None:
        self._report = report

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._report is not None:
                self._report(name, time.perf_counter() - started)


def _variants(
    source: Image.Image, upright: tuple[int, int], pipeline: Pipeline
) -> dict[str, Image.Image]:
    # Biggest first, so that a smaller variant can start from a bigger one's first step.
    order = sorted(pipeline.variants, key=lambda v: -_area(v.target_size(*upright)))
    bases: list[Image.Image] = []  # first steps that keep the whole picture and its shape
    made: dict[str, Image.Image] = {}
    for variant in order:
        image, operations = source, variant.operations
        if operations and _first_scale(variant, *upright) is not None:
            first = operations[0]
            target = first.target_size(*upright, upscale=variant.upscale)
            image = transforms.apply(
                _smallest_base(bases, target, default=source),
                first,
                upscale=variant.upscale,
                nominal=upright,
            )
            if _keeps_whole_picture(first):
                bases.append(image)
            operations = operations[1:]
        for operation in operations:
            image = transforms.apply(image, operation, upscale=variant.upscale)
        made[variant.name] = image
    return made


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _keeps_whole_picture(operation: Operation) -> bool:
    """A scaling that keeps all of the picture at its shape: its result can stand for the source."""
    return isinstance(operation, Fit) or (
        isinstance(operation, Resize) and None in (operation.width, operation.height)
    )


def _smallest_base(
    bases: list[Image.Image], target: tuple[int, int], *, default: Image.Image
) -> Image.Image:
    """The smallest earlier result still ``REDUCING_GAP`` times the target on both sides: from
    there, one LANCZOS pass gives what it would give from the full image."""
    gap = transforms.REDUCING_GAP
    fits = [b for b in bases if b.width >= target[0] * gap and b.height >= target[1] * gap]
    return min(fits, key=lambda b: b.width * b.height, default=default)
