"""Before/after pictures of every operation and output format of the pipeline language.

Every picture is made by the real engine (:func:`imageproc.engine.render`) from a source image
drawn here, deterministically: a small landscape (sky on top, sun top left, a house on the left,
a busy patch of detail on the right) with transparent rounded corners and a translucent bubble.
A picture is one image: the source (before) and each variant's output (after), side by side at
the same scale, on a checkerboard where they are transparent.

The documentation build calls :func:`pictures` and serves the results under
``reference/pictures/``; nothing is written into ``docs/``. To look at them::

    python scripts/docs_pictures.py /tmp/pictures

:data:`PICTURES` lists what is shown; :func:`coverage` reads back, by parsing each picture's
pipeline, which operations and formats that covers, and :func:`pictures` refuses to run if the
pipeline language knows one without a picture.
"""

import io
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

from PIL import Image, ImageDraw

from imageproc._formats import OUTPUT_FORMATS
from imageproc.engine import render
from imageproc.pipeline import OPERATIONS, Pipeline

__all__ = ["PICTURES", "Picture", "coverage", "main", "pictures", "source_image"]

SIZE: Final = (600, 400)
#: The frame around the panels, the gap between them (where the arrow goes) and the checkerboard.
_MARGIN: Final = 12
_GAP: Final = 36
_CHECK: Final = 8
_FRAME: Final = (226, 232, 240)
_ARROW: Final = (100, 116, 139)


class Picture(NamedTuple):
    """One before/after picture: ``pipeline`` applied to the source, shown at ``scale``.

    ``region`` (left, top, right, bottom, in source pixels) shows only that part of the source
    and of each output (for outputs the same size as the source), so compression and filters can
    be seen up close; ``scale`` above 1 enlarges it with square pixels.
    """

    name: str
    pipeline: str
    scale: float = 0.5
    region: tuple[int, int, int, int] | None = None
    #: Show the source as stored in a JPEG turned by its EXIF orientation (6: 90° clockwise).
    exif_turned: bool = False


#: The detailed patch, close up (the right-hand side of the source).
_DETAIL: Final = (400, 150, 560, 270)
#: The sky, the sun and the bubble's edge, close up (smooth gradients band and block first).
_SKY: Final = (40, 30, 230, 150)

#: Every picture, by file name. A new operation or format needs one here (``pictures`` checks).
PICTURES: Final[tuple[Picture, ...]] = (
    # Scaling and cropping.
    Picture("fit.png", "fit:300x200,png"),
    Picture("fit-tall.png", "fit:150x300,png"),
    Picture("upscale.png", "plain=fit:900x600,png;enlarged=fit:900x600,upscale,png", 0.35),
    Picture("fill.png", "fill:200x200,png"),
    Picture("fill-w.png", "fill:200x200:w,png"),
    Picture("fill-n.png", "fill:300x100:n,png"),
    Picture("fill-smart.png", "fill:200x200:smart,png"),
    Picture("pad.png", "pad:300x300:1e293b,png"),
    Picture("resize.png", "resize:300x300,png"),
    Picture("resize-width.png", "resize:200x,png"),
    Picture("crop.png", "crop:380,120,200,150,png", 1.0),
    # Turning and mirroring.
    Picture("rotate-90.png", "rotate:90,png"),
    Picture("rotate-30.png", "rotate:30,png"),
    Picture("rotate-minus-30.png", "rotate:-30:00000000,png"),
    Picture("flip-h.png", "flip:h,png"),
    Picture("flip-v.png", "flip:v,png"),
    # Filters, close up.
    Picture("grayscale.png", "grayscale,png"),
    Picture("blur.png", "blur:3,png", 1.0, _DETAIL),
    Picture("sharpen.png", "sharpen:2,png", 2.0, _DETAIL),
    # Output formats.
    Picture("jpeg.png", "jpeg"),
    Picture("jpeg-background.png", "background:1e3a8a,jpeg"),
    Picture("jpeg-quality.png", "q30=jpeg:q30;q90=jpeg:q90", 2.0, _SKY),
    Picture("png.png", "png"),
    Picture("webp.png", "lossy=webp:q50;lossless=webp:lossless", 2.0, _SKY),
    Picture("avif.png", "q30=avif:q30;default=avif", 2.0, _SKY),
    Picture("gif.png", "gif", 1.0),
    Picture("tiff.png", "tiff"),
    Picture("original.png", "original"),
    # What every variant gets: the source turned upright from its EXIF orientation.
    Picture("orientation.png", "fit:300x300,png", exif_turned=True),
)


def coverage(selection: Sequence[Picture] | None = None) -> tuple[set[str], set[str]]:
    """The operations and the output formats the ``selection`` of pictures (by default
    :data:`PICTURES`) shows, read from their parsed pipelines, so a typo cannot claim coverage."""
    operations: set[str] = set()
    formats: set[str] = set()
    for picture in PICTURES if selection is None else selection:
        for variant in Pipeline.parse(picture.pipeline).variants:
            operations.update(op.op for op in variant.operations)
            formats.add(variant.encoding.format)
    return operations, formats


def missing() -> tuple[set[str], set[str]]:
    """Operations and formats of the pipeline language that no picture shows."""
    operations, formats = coverage()
    return set(OPERATIONS) - operations, ({*OUTPUT_FORMATS, "original"} - formats)


def source_image() -> Image.Image:
    """The source: a 600x400 RGBA landscape, the same on every run."""
    width, height = SIZE
    horizon = 270
    image = Image.new("RGBA", SIZE)
    draw = ImageDraw.Draw(image)
    for y in range(height):  # sky gradient down to the horizon, then the ground's
        if y < horizon:
            t = y / horizon
            colour = (round(30 + 150 * t), round(80 + 140 * t), round(170 + 80 * t), 255)
        else:
            t = (y - horizon) / (height - horizon)
            colour = (round(70 - 40 * t), round(150 - 60 * t), round(60 - 20 * t), 255)
        draw.line([(0, y), (width, y)], fill=colour)
    draw.ellipse((50, 40, 140, 130), fill=(253, 200, 60, 255), outline=(245, 140, 30, 255), width=4)
    draw.polygon([(150, horizon), (270, 150), (390, horizon)], fill=(90, 100, 130, 255))
    draw.polygon([(240, 180), (270, 150), (300, 180), (285, 175), (262, 185)], fill="white")
    # The house, on the left: walls, roof, door, window.
    draw.rectangle((60, 200, 170, 300), fill=(200, 60, 50, 255), outline=(90, 20, 20, 255), width=3)
    draw.polygon([(45, 205), (115, 150), (185, 205)], fill=(120, 40, 30, 255))
    draw.rectangle((80, 245, 108, 300), fill=(80, 50, 30, 255))
    draw.rectangle((125, 225, 155, 250), fill=(250, 240, 180, 255), outline="black", width=2)
    # The detailed patch on the right: a tree of small leaves over a picket fence.
    draw.rectangle((470, 230, 490, 330), fill=(100, 60, 30, 255))
    leaves = random.Random(7)
    palette = [(34, 139, 34), (0, 100, 0), (154, 205, 50), (255, 140, 0), (220, 20, 60)]
    for _ in range(700):
        cx, cy = leaves.gauss(480, 45), leaves.gauss(170, 45)
        if (cx - 480) ** 2 / 75**2 + (cy - 170) ** 2 / 80**2 > 1:
            continue
        r = leaves.randint(2, 6)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*leaves.choice(palette), 255))
    for x in range(400, 590, 9):
        draw.rectangle((x, 300, x + 4, 360), fill=(245, 245, 235, 255), outline=(60, 60, 60, 255))
    draw.rectangle((395, 315, 595, 320), fill=(245, 245, 235, 255))
    # Transparency: rounded corners (clear) and a bubble at 40 % opacity.
    alpha = Image.new("L", SIZE, 0)
    mask = ImageDraw.Draw(alpha)
    mask.rounded_rectangle((0, 0, width - 1, height - 1), radius=48, fill=255)
    mask.ellipse((300, 50, 380, 130), fill=102)
    image.putalpha(alpha)
    return image


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _source_bytes(picture: Picture, source: Image.Image) -> tuple[bytes, Image.Image]:
    """What is uploaded for ``picture``, and how it looks as stored (the "before" panel)."""
    if not picture.exif_turned:
        return _encoded(source, "PNG", compress_level=1), source
    # Stored turned a quarter counter-clockwise, with orientation 6 ("turn 90° clockwise").
    stored = source.convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(stored, "JPEG", quality=90, exif=exif.tobytes()), stored


def _checkerboard(size: tuple[int, int]) -> Image.Image:
    tile = Image.new("RGB", (2 * _CHECK, 2 * _CHECK), (255, 255, 255))
    ImageDraw.Draw(tile).rectangle((0, 0, _CHECK - 1, _CHECK - 1), fill=(204, 204, 204))
    ImageDraw.Draw(tile).rectangle(
        (_CHECK, _CHECK, 2 * _CHECK - 1, 2 * _CHECK - 1), fill=(204,) * 3
    )
    board = Image.new("RGB", size)
    for x in range(0, size[0], tile.width):
        for y in range(0, size[1], tile.height):
            board.paste(tile, (x, y))
    return board


def _panel(image: Image.Image, picture: Picture) -> Image.Image:
    """``image`` as shown: the region, scaled, over a checkerboard."""
    image = image.convert("RGBA")
    if picture.region is not None:
        image = image.crop(picture.region)
    if picture.scale != 1:
        size = (
            max(1, round(image.width * picture.scale)),
            max(1, round(image.height * picture.scale)),
        )
        resample = Image.Resampling.NEAREST if picture.scale > 1 else Image.Resampling.LANCZOS
        image = image.resize(size, resample)
    board = _checkerboard(image.size)
    board.paste(image, mask=image.getchannel("A"))
    return board


def _compose(panels: Sequence[Image.Image]) -> Image.Image:
    """The panels in a row, vertically centred, an arrow after the first (before → after)."""
    width = 2 * _MARGIN + sum(p.width for p in panels) + _GAP * (len(panels) - 1)
    height = 2 * _MARGIN + max(p.height for p in panels)
    canvas = Image.new("RGB", (width, height), _FRAME)
    draw = ImageDraw.Draw(canvas)
    x = _MARGIN
    for index, panel in enumerate(panels):
        canvas.paste(panel, (x, (height - panel.height) // 2))
        x += panel.width
        if index == 0:  # the arrow from before to after
            mid = height // 2
            draw.rectangle((x + 8, mid - 2, x + _GAP - 16, mid + 2), fill=_ARROW)
            draw.polygon(
                [(x + _GAP - 18, mid - 8), (x + _GAP - 8, mid), (x + _GAP - 18, mid + 8)],
                fill=_ARROW,
            )
        x += _GAP
    return canvas


def render_picture(picture: Picture, source: Image.Image) -> bytes:
    """One picture as PNG bytes: the source, then every variant's output, all made by the engine."""
    data, stored = _source_bytes(picture, source)
    outputs = render(data, Pipeline.parse(picture.pipeline))
    afters = []
    for output in outputs:
        with Image.open(io.BytesIO(output.data)) as decoded:
            decoded.load()
            afters.append(_panel(decoded, picture))
    composed = _compose([_panel(stored, picture), *afters])
    return _encoded(composed, "PNG", optimize=False, compress_level=9)


def pictures() -> dict[str, bytes]:
    """Every picture of :data:`PICTURES`, by file name, as PNG bytes.

    Raises ``RuntimeError`` if an operation or output format of the pipeline language has no
    picture, so that the documentation cannot silently fall behind the language.
    """
    operations, formats = missing()
    if operations or formats:
        raise RuntimeError(
            "the pipeline reference lacks pictures for"
            f" operations {sorted(operations)} and formats {sorted(formats)}:"
            " add them to PICTURES in scripts/docs_pictures.py"
        )
    source = source_image()
    return {picture.name: render_picture(picture, source) for picture in PICTURES}


def main(argv: Sequence[str] | None = None) -> int:
    """Write every picture into the folder given as the only argument."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: docs_pictures.py FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    made = pictures()
    for name, data in made.items():
        (folder / name).write_bytes(data)
    total = sum(len(data) for data in made.values())
    elapsed = time.perf_counter() - started
    print(f"{len(made)} pictures, {total / 1024:.0f} KiB, in {elapsed:.1f} s: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
