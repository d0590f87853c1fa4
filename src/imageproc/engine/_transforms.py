"""The pipeline's operations, carried out on decoded Pillow images.

Pure functions on images, no I/O. Every operation goes through Pillow's C code (resampling,
filters, transposes): nothing here loops over pixels in Python, so worker threads keep running in
parallel while Pillow has released the GIL. Inputs are in mode ``RGB``, ``RGBA``, ``L`` or ``LA``
(what ``_decode`` decodes to).
"""

from __future__ import annotations

from typing import Final

from PIL import Image, ImageFilter, ImageOps

from imageproc.errors import InvalidPipeline
from imageproc.pipeline._colour import Colour
from imageproc.pipeline._operations import (
    Blur,
    Crop,
    Fill,
    Fit,
    Flip,
    Grayscale,
    Operation,
    Pad,
    Resize,
    Rotate,
    Sharpen,
)

__all__ = ["apply", "crop_outside", "fill_box"]

#: Pillow reduces by whole factors (cheap box averaging) down to this multiple of the target,
#: then finishes with LANCZOS: far faster than LANCZOS all the way, and indistinguishable.
REDUCING_GAP: Final = 3.0
_QUARTER_TURNS: Final = {
    90: Image.Transpose.ROTATE_270,  # Pillow's ROTATE_* turn counter-clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
# Where the crop sits along the axis it can move on, for each gravity (0 = start, 1 = end).
_ALONG_X: Final = {"w": 0.0, "nw": 0.0, "sw": 0.0, "e": 1.0, "ne": 1.0, "se": 1.0}
_ALONG_Y: Final = {"n": 0.0, "nw": 0.0, "ne": 0.0, "s": 1.0, "sw": 1.0, "se": 1.0}
_SMART_PROBE: Final = 96


def _resize(
    image: Image.Image,
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    if size == image.size and box is None:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)


def _fill_colour(image: Image.Image, colour: Colour) -> int | tuple[int, ...]:
    """``colour`` in the terms of ``image``'s mode."""
    if image.mode == "RGBA":
        return colour.rgba
    if image.mode == "LA":
        return (
            round(0.299 * colour.red + 0.587 * colour.green + 0.114 * colour.blue),
            colour.alpha,
        )
    if image.mode == "L":
        return round(0.299 * colour.red + 0.587 * colour.green + 0.114 * colour.blue)
    return colour.rgb


def _with_alpha(image: Image.Image) -> Image.Image:
    return (
        image
        if image.mode in ("RGBA", "LA")
        else image.convert("LA" if image.mode == "L" else "RGBA")
    )


def _detail_offset(image: Image.Image, box_w: float, box_h: float) -> tuple[float, float]:
    """Where a ``box_w`` x ``box_h`` crop of ``image`` holds the most edges (``smart`` gravity).

    A cover crop spans the whole image along one axis, so only the other position is chosen: the
    edge map of a small grayscale copy is averaged down to one row (or column) of at most 96
    values, and the window with the largest sum wins.
    """
    width, height = image.size
    horizontal = box_w < width - 0.5
    scale = _SMART_PROBE / max(width, height)
    probe = image.convert("L").resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX
    )
    edges = probe.filter(ImageFilter.FIND_EDGES)
    if horizontal:
        profile = list(edges.resize((edges.width, 1), Image.Resampling.BOX).tobytes())
        window = max(1, round(box_w * scale))
    else:
        profile = list(edges.resize((1, edges.height), Image.Resampling.BOX).tobytes())
        window = max(1, round(box_h * scale))
    if window >= len(profile):
        return (width - box_w) / 2, (height - box_h) / 2
    sums = [sum(profile[:window])]
    for start in range(1, len(profile) - window + 1):
        sums.append(sums[-1] - profile[start - 1] + profile[start + window - 1])
    best = max(range(len(sums)), key=lambda i: (sums[i], -abs(i - (len(sums) - 1) / 2)))
    offset = best / scale
    if horizontal:
        return min(max(0.0, offset), width - box_w), (height - box_h) / 2
    return (width - box_w) / 2, min(max(0.0, offset), height - box_h)


def crop_outside(crop: Crop, width: int, height: int) -> InvalidPipeline:
    """The error for a crop that starts outside a ``width`` x ``height`` image: it would keep
    nothing, and handing back the whole image instead would hide the mistake."""
    return InvalidPipeline(f"{crop} starts outside the {width}x{height} image it is applied to")


def fill_box(image: Image.Image, fill: Fill, *, upscale: bool) -> tuple[float, float, float, float]:
    """The region of ``image`` that ``fill`` keeps, in source pixels (before scaling)."""
    width, height = image.size
    target_w, target_h = fill.target_size(width, height, upscale=upscale)
    # The largest region of the target's shape that fits the image.
    scale = min(width / target_w, height / target_h)
    box_w, box_h = target_w * scale, target_h * scale
    if fill.gravity == "smart":
        left, top = _detail_offset(image, box_w, box_h)
    else:
        left = (width - box_w) * _ALONG_X.get(fill.gravity, 0.5)
        top = (height - box_h) * _ALONG_Y.get(fill.gravity, 0.5)
    return (left, top, left + box_w, top + box_h)


def apply(
    image: Image.Image,
    operation: Operation,
    *,
    upscale: bool = False,
    nominal: tuple[int, int] | None = None,
) -> Image.Image:
    """``image`` after ``operation``; a new image, or ``image`` itself if nothing changes.

    ``nominal`` is the size ``image`` stands for when it is a smaller copy of the real thing (a
    JPEG shrunk on load, or a larger variant reused): scaling operations then compute their
    target from the nominal size, so the output is the same size to the pixel either way.
    """
    width, height = nominal or image.size
    match operation:
        case Fit() | Resize():
            return _resize(image, operation.target_size(width, height, upscale=upscale))
        case Fill():
            size = operation.target_size(width, height, upscale=upscale)
            box = fill_box(image, operation, upscale=upscale)
            # One resample straight from the chosen region: no intermediate full-size copy.
            return _resize(image, size, box)
        case Pad():
            inner = Fit(operation.width, operation.height).target_size(
                width, height, upscale=upscale
            )
            fitted = _resize(image, inner)
            if operation.colour.alpha < 255:
                fitted = _with_alpha(fitted)
            canvas = Image.new(fitted.mode, (operation.width, operation.height))
            canvas.paste(_fill_colour(canvas, operation.colour), (0, 0, *canvas.size))
            offset = ((operation.width - inner[0]) // 2, (operation.height - inner[1]) // 2)
            canvas.paste(fitted, offset)
            return canvas
        case Crop():
            region = operation.box(image.width, image.height)
            if region is None:
                raise crop_outside(operation, image.width, image.height)
            return image.crop(region)
        case Rotate():
            if operation.degrees == 0:
                return image
            if operation.lossless:
                return image.transpose(_QUARTER_TURNS[operation.degrees])
            source = _with_alpha(image) if operation.colour.alpha < 255 else image
            return source.rotate(
                -operation.degrees,
                resample=Image.Resampling.BICUBIC,
                expand=True,
                fillcolor=_fill_colour(source, operation.colour),
            )
        case Flip():
            return ImageOps.mirror(image) if operation.direction == "h" else ImageOps.flip(image)
        case Grayscale():
            if image.mode in ("L", "LA"):
                return image
            return image.convert("LA" if image.mode == "RGBA" else "L")
        case Blur():
            return image.filter(ImageFilter.GaussianBlur(operation.sigma))
        case Sharpen():
            return image.filter(
                ImageFilter.UnsharpMask(
                    radius=2, percent=round(operation.amount * 100), threshold=2
                )
            )
    raise TypeError(f"no engine for {operation!r}")  # pragma: no cover - the union is exhaustive
