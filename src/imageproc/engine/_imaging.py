"""The Pillow engine: read an image header safely, then make every variant from one decode.

Pure functions, bytes in and bytes out, no I/O. ``_open`` opens a file with the limits
checked against its header before any pixel is decoded, ``_decode`` and ``_colour`` read it,
``_encode`` writes the formats; ``_transforms`` carries out the operations; this module plans
the work: how far a
JPEG may shrink on load, which variant starts from which, and which get every animation frame.
Every failure Pillow can report for a bad file becomes :class:`~imageproc.InvalidImage`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import attrs
from PIL import Image

from imageproc._task import Output, SourceInfo
from imageproc.engine import _transforms as transforms
from imageproc.engine._decode import Decoded, decode
from imageproc.engine._encode import check_side, encode
from imageproc.engine._open import (
    DEFAULT_FORMATS,
    ImageLimits,
    mapped_errors,
    open_checked,
    source_format,
)
from imageproc.engine._placeholder import placeholder
from imageproc.engine._transforms import crop_outside
from imageproc.errors import InvalidPipeline
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._operations import Crop, Fill, Fit, Operation, Pad, Resize
from imageproc.pipeline._pipeline import Pipeline
from imageproc.pipeline._variant import Variant

__all__ = ["DEFAULT_FORMATS", "ImageLimits", "Rendered", "draft_scale", "probe", "render"]


@attrs.frozen
class Rendered(Output):
    """One encoded variant, ready to store: the :class:`~imageproc.Output` it becomes (its
    fields are declared there, once) with its bytes and how to store them.

    Its ``key`` is the variant's file name, ``<name>.<extension>``: the engine knows no task, so
    where it is stored is decided by whoever stores it (:meth:`stored_at`).
    """

    data: bytes = attrs.field(kw_only=True, repr=False)
    content_type: str = attrs.field(kw_only=True)
    extension: str = attrs.field(kw_only=True)

    def stored_at(self, key: str) -> Output:
        """The :class:`~imageproc.Output` a task records once these bytes are stored at ``key``."""
        fields = {field.name: getattr(self, field.name) for field in attrs.fields(Output)}
        return Output(**{**fields, "key": key})


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
            orientation=_header_orientation(image),
        )


#: How much bigger than each variant a JPEG shrunk on load by 1/2, 1/4 or 1/8 must stay, so
#: that the result is within 1 dB PSNR of a full decode and one LANCZOS pass, both measured
#: against the ideal downscale of the picture the JPEG was made from (tests hold this for a clean
#: and a noisy picture). The scaled IDCT that does the shrinking is a different filter at each
#: scale. At 1/2 it is a frequency-domain reduction: a final LANCZOS pass of 1.25x is margin
#: enough even on the noisy picture (1.2x measured 0.8 dB short of a full decode, 1.0x 1.5 dB).
#: 1/4 keeps 2x (0.75 dB short there), as libvips' and Pillow's thumbnails do; 1/8, the DC
#: coefficient alone (an 8x8 box average), needs 2.5x (0.5 dB short; 2x was 2.1 dB short).
DRAFT_GAPS: Final = {2: 1.25, 4: 2.0, 8: 2.5}
#: How much bigger than a variant an earlier variant must be to stand in for the source. A
#: LANCZOS result is already free of what would alias, so a second LANCZOS pass from 1.5x (1600
#: to 1024 px) stays within 0.2 dB PSNR of one pass from the source (measured against the ideal
#: downscale), at a fraction of the cost.
BASE_GAP: Final = 1.5
_TURNED: Final = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(0x0112, 1) or 1)


def _header_orientation(image: Image.Image) -> int:
    """The EXIF orientation from what opening ``image`` read, never decoding it (a PNG's
    ``getexif()`` would, to look for an eXIf chunk after the pixels): 1 if there is none."""
    if image.format == "TIFF":
        return 1  # Pillow reads a TIFF's size upright already, and turns its pixels as it loads
    try:
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(0x0112, 1)
    except Exception:  # unreadable EXIF: decoding will judge the file; the size stays as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


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


def draft_scale(pipeline: Pipeline, width: int, height: int) -> int:
    """How far a JPEG of ``width`` x ``height`` (upright) may be shrunk on load for every variant
    of ``pipeline``: 8, 4 or 2 to decode it at 1/8, 1/4 or 1/2 of its size, 1 to decode it whole.

    The largest scale whose :data:`DRAFT_GAPS` every variant's first scaling still clears: a
    ``fit:1600x1600`` of a 4000x3000 source (2.5x smaller) may start from 1/2 (1.25x left), a
    ``fit:256x256`` from 1/4 (3.9x left) but not from 1/8 (1.95x). A variant that needs every
    pixel (no scaling first) keeps the whole decode.
    """
    scales = [_first_scale(variant, width, height) for variant in pipeline.variants]
    largest = max((s for s in scales if s is not None), default=None)
    if largest is None or None in scales:
        return 1
    for denominator in (8, 4, 2):
        if largest * DRAFT_GAPS[denominator] * denominator <= 1 + 1e-9:  # float rounding
            return denominator
    return 1


def check_output_sizes(
    pipeline: Pipeline,
    width: int,
    height: int,
    limits: ImageLimits,
    *,
    input_format: str | None = None,
) -> None:
    """Refuse, from the header alone, a pipeline this ``width`` x ``height`` source cannot
    satisfy, so the upload is refused before it is stored rather than failing in a worker.

    EXIF may turn the source, and the header read here does not say which way, so each check
    runs on both orientations: any image, intermediate or final, of more pixels than
    ``limits.max_pixels`` in either is refused (a small source and ``resize:…,upscale`` could
    otherwise ask for gigabytes), and so is a crop that starts outside the image, or an output
    larger than its format can hold, in both. ``input_format`` (Pillow's name) resolves
    ``original``; without it ``original`` outputs are not checked against their format.
    """
    # As stored first, so a message names the image as the user knows it.
    orientations = list(dict.fromkeys([(width, height), (height, width)]))
    # Variant name → why it cannot be made, per orientation where it cannot.
    impossible: dict[str, list[str]] = {}
    for w, h in orientations:
        for variant in pipeline.variants:
            problem = _impossible(variant, w, h, width, height, limits, input_format)
            if problem is not None:
                impossible.setdefault(variant.name, []).append(problem)
    for name, problems in impossible.items():
        if len(problems) == len(orientations):
            raise InvalidPipeline(f"variant {name!r}: {problems[0]}")


def _impossible(
    variant: Variant,
    w: int,
    h: int,
    width: int,
    height: int,
    limits: ImageLimits,
    input_format: str | None,
) -> str | None:
    """Why ``variant`` cannot be made from a ``w`` x ``h`` upright source, or None. Raises at once
    for an image over the pixel limit: memory safety does not depend on the orientation."""
    size = (w, h)
    for operation in variant.operations:
        if isinstance(operation, Crop) and operation.box(*size) is None:
            return crop_outside(operation, *size).message
        size = operation.target_size(*size, upscale=variant.upscale)
        if size[0] * size[1] > limits.max_pixels:
            raise InvalidPipeline(
                f"variant {variant.name!r} would make a {size[0]}x{size[1]} image from this"
                f" {width}x{height} source, over the limit of {limits.max_pixels} pixels"
            )
    if variant.encoding.format == "original" and input_format is None:
        return None
    try:
        check_side(variant.encoding.resolve(input_format or ""), *size)
    except InvalidPipeline as error:
        return error.message
    return None


def render(
    data: bytes,
    pipeline: Pipeline,
    limits: ImageLimits | None = None,
    *,
    stage: Callable[[str, float], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Rendered]:
    """Decode ``data`` once, upright and in sRGB, and encode every variant of ``pipeline``.

    A JPEG is shrunk on load as far as every variant allows (see :func:`draft_scale`), larger
    variants are made first so smaller ones can start from them, and animation frames are decoded
    only if some variant keeps them. ``stage``, if given, is told how long the ``decode``,
    ``transform`` and ``encode`` stages took; ``progress``, if given, how many variants are
    encoded, after each one. Raises :class:`~imageproc.InvalidImage` if the image
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
        check_output_sizes(pipeline, *stored, limits, input_format=fmt)  # both orientations
        encodings = {v.name: v.encoding.resolve(fmt) for v in pipeline.variants}
        animate = {
            v.name: encodings[v.name].animates and not v.first_frame for v in pipeline.variants
        }
        upright = (stored[1], stored[0]) if turned else stored
        scale = draft_scale(pipeline, *upright) if fmt == "JPEG" else 1
        # Pillow's draft picks the largest DCT scale whose result still covers the size asked.
        draft = (stored[0] // scale, stored[1] // scale) if scale > 1 else None
        decoded = decode(data, limits, draft=draft, all_frames=any(animate.values()))
        if scale == 1:
            upright = decoded.size  # full size, turned upright by the decoder
    with timer("transform"):
        made = _variants(decoded, upright, pipeline, animate)
    with timer("encode"):
        encoded = []
        for variant in pipeline.variants:
            frames = made[variant.name]
            encoding = encodings[variant.name]
            encoded.append(
                _encode(frames, variant, encoding, decoded, animated=animate[variant.name])
            )
            if progress is not None:
                progress(len(encoded))
        return encoded


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
        key=f"{variant.name}.{encoding.extension}",
        format=encoding.format,
        width=frames[0].width,
        height=frames[0].height,
        bytes=len(data),
        blurhash=blurhash,
        dominant_color=colour,
        data=data,
        content_type=encoding.content_type,
        extension=encoding.extension,
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
    """The smallest earlier result still :data:`BASE_GAP` times the target on both sides: from
    there, one more LANCZOS pass gives what it would give from the full image."""
    fits = [
        b for b in bases if b.width >= target[0] * BASE_GAP and b.height >= target[1] * BASE_GAP
    ]
    return min(fits, key=lambda b: b.width * b.height, default=default)
