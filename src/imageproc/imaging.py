"""The Pillow engine: read an image header safely, then make every variant from one decode.

Pure functions, bytes in and bytes out, no I/O. :mod:`imageproc.codecs` reads (with the limits
checked against the header before any pixel is decoded) and writes the formats;
:mod:`imageproc.transforms` carries out the operations; this module plans the work: how far a
JPEG may shrink on load, which variant starts from which, and which get every animation frame.
Every failure Pillow can report for a bad file becomes :class:`~imageproc.InvalidImage`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import attrs
from PIL import Image

from imageproc import transforms
from imageproc.codecs import (
    DEFAULT_FORMATS,
    Decoded,
    ImageLimits,
    decode,
    encode,
    mapped_errors,
    open_checked,
    source_format,
)
from imageproc.errors import InvalidPipeline
from imageproc.pipeline import Encoding, Fill, Fit, Operation, Pad, Pipeline, Resize, Variant
from imageproc.placeholder import placeholder
from imageproc.task import SourceInfo

__all__ = ["DEFAULT_FORMATS", "ImageLimits", "Rendered", "probe", "render", "shrink_target"]

#: File extensions and content types of stored originals, by Pillow format.
_ORIGINALS: Final = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "TIFF": ("tiff", "image/tiff"),
    "BMP": ("bmp", "image/bmp"),
    "AVIF": ("avif", "image/avif"),
    "HEIF": ("heic", "image/heic"),
}


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


def extension_for(pillow_format: str) -> str:
    """The file extension used for a stored original of this format."""
    return _ORIGINALS.get(pillow_format, (pillow_format.lower(), ""))[0]


def content_type_for(pillow_format: str) -> str:
    """The MIME type of a stored original of this format."""
    return _ORIGINALS.get(pillow_format, ("", "application/octet-stream"))[1]


def probe(data: bytes, limits: ImageLimits | None = None) -> SourceInfo:
    """Read the header of ``data`` and check it against ``limits`` without decoding pixels.

    Raises :class:`~imageproc.InvalidImage` for an empty, unreadable, oversized or refused image.
    """
    limits = limits or ImageLimits()
    with open_checked(data, limits) as image:
        return SourceInfo(
            format=source_format(image),
            width=image.width,
            height=image.height,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )


#: How much bigger than the largest variant a JPEG may be shrunk to on load. The DCT scaling
#: that does the shrinking is itself a good reduction, so twice the target is margin enough (as
#: in Pillow's own ``thumbnail``).
DRAFT_GAP: Final = 2.0
_TURNED: Final = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(0x0112, 1) or 1)


def _first_scale(variant: Variant, width: int, height: int) -> float | None:
    """How much the variant's first operation scales a ``width`` x ``height`` source down, or
    None if it needs full resolution (no scaling first, or a crop, rotate or filter first)."""
    if not variant.operations:
        return None
    first = variant.operations[0]
    if isinstance(first, Fit | Resize | Fill):
        target = first.target_size(width, height, upscale=variant.upscale)
        return max(target[0] / width, target[1] / height)  # fill covers: the larger ratio
    if isinstance(first, Pad):
        inner = Fit(first.width, first.height).target_size(width, height, upscale=variant.upscale)
        return max(inner[0] / width, inner[1] / height)
    return None


def shrink_target(pipeline: Pipeline, width: int, height: int) -> tuple[int, int] | None:
    """The smallest upright size a decoder may shrink the source to on load and still give every
    variant full quality, or None if some variant needs every pixel.

    Each variant's first scaling must still be a reduction by at least ``DRAFT_GAP`` from the
    shrunk image, so the final LANCZOS pass has margin enough to stay within 1 dB PSNR of a full
    decode (tested).
    """
    needed = 0.0
    for variant in pipeline.variants:
        scale = _first_scale(variant, width, height)
        if scale is None or scale * DRAFT_GAP >= 1:
            return None
        needed = max(needed, scale * DRAFT_GAP)
    return math.ceil(width * needed), math.ceil(height * needed)


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
    """Decode ``data`` once, upright and in sRGB, and encode every variant of ``pipeline``.

    A JPEG is shrunk on load as far as every variant allows (see :func:`shrink_target`), larger
    variants are made first so smaller ones can start from them, and animation frames are decoded
    only if some variant keeps them. ``stage``, if given, is told how long the ``decode``,
    ``transform`` and ``encode`` stages took. Raises :class:`~imageproc.InvalidImage` if the image
    cannot be decoded, and :class:`~imageproc.InvalidPipeline` if a variant would be larger than
    the pixel limit or the output format allows.
    """
    limits = limits or ImageLimits()
    timer = _Timer(stage)
    with timer("decode"):
        with (
            open_checked(data, limits, all_frames=False) as header,
            mapped_errors("corrupt or truncated image"),
        ):
            fmt, stored = source_format(header), header.size
            # Only a JPEG can shrink on load, and only there is the orientation needed before
            # decoding; it is also cheap there (APP1 precedes the pixels), whereas a PNG's
            # getexif() decodes the whole image to reach chunks after the pixel data.
            turned = fmt == "JPEG" and _orientation(header) in _TURNED
        check_output_sizes(pipeline, *stored, limits)  # checks both orientations
        encodings = {v.name: v.encoding.resolve(fmt) for v in pipeline.variants}
        animate = {
            v.name: encodings[v.name].animates and not v.first_frame for v in pipeline.variants
        }
        upright = (stored[1], stored[0]) if turned else stored
        shrink = shrink_target(pipeline, *upright) if fmt == "JPEG" else None
        draft = None if shrink is None else ((shrink[1], shrink[0]) if turned else shrink)
        decoded = decode(data, limits, draft=draft, all_frames=any(animate.values()))
        if shrink is None:
            upright = decoded.size  # full size, turned upright by the decoder
    with timer("transform"):
        made = _variants(decoded, upright, pipeline, animate)
    with timer("encode"):
        return [
            _encode(made[v.name], v, encodings[v.name], decoded, animated=animate[v.name])
            for v in pipeline.variants
        ]


def _encode(
    frames: Sequence[Image.Image],
    variant: Variant,
    encoding: Encoding,
    decoded: Decoded,
    *,
    animated: bool,
) -> Rendered:
    moving = animated and len(frames) > 1
    data = encode(
        frames,
        encoding,
        durations=decoded.durations if moving else (),
        loop=decoded.loop if moving else None,
        background=variant.background,
        metadata=decoded.metadata if variant.keep_metadata else None,
    )
    blurhash, colour = placeholder(frames[0]) if variant.placeholder else (None, None)
    return Rendered(
        name=variant.name,
        format=encoding.format,
        content_type=encoding.content_type,
        extension=encoding.extension,
        width=frames[0].width,
        height=frames[0].height,
        data=data,
        blurhash=blurhash,
        dominant_color=colour,
    )


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
    decoded: Decoded, upright: tuple[int, int], pipeline: Pipeline, animate: dict[str, bool]
) -> dict[str, list[Image.Image]]:
    """Every variant's frames, transformed. A still variant takes the first frame only."""
    made: dict[str, list[Image.Image]] = {}
    for index, frame in enumerate(decoded.frames):
        wanted = [v for v in pipeline.variants if index == 0 or animate[v.name]]
        for name, image in _frame_variants(frame, upright, wanted).items():
            made.setdefault(name, []).append(image)
    return made


def _frame_variants(
    source: Image.Image, upright: tuple[int, int], variants: Sequence[Variant]
) -> dict[str, Image.Image]:
    # Biggest first, so that a smaller variant can start from a bigger one's first step.
    order = sorted(variants, key=lambda v: -_area(v.target_size(*upright)))
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
