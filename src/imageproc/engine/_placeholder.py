"""What to show while an image loads: a BlurHash and the dominant colour.

Both come from small thumbnails made in C (a box filter over the whole picture), so the cost
barely depends on the image's size: the only Python-level loops run over at most 32x32 pixels
inside the ``blurhash`` package (pure Python, imported when first needed).
"""

from __future__ import annotations

from typing import Final

from PIL import Image

__all__ = ["placeholder"]

#: BlurHash components across and down: enough for a recognisable blur, and a 28-character hash.
COMPONENTS: Final = (4, 3)
#: Longest side of the thumbnail the BlurHash is computed on (its encoder is pure Python).
_HASH_SIDE: Final = 32
#: Longest side of the thumbnail the dominant colour is found on: small enough to be quick,
#: large enough that a fine pattern is not averaged into a colour it does not contain.
_COLOUR_SIDE: Final = 64
#: Colours the thumbnail is reduced to; the most frequent one is the dominant colour.
_CLUSTERS: Final = 8


def placeholder(image: Image.Image) -> tuple[str, str]:
    """The BlurHash (4x3 components) of ``image`` and its dominant colour as ``#rrggbb``.

    Transparent parts do not count towards the dominant colour; the BlurHash, which has no
    alpha, sees them on white.
    """
    import blurhash  # type: ignore[import-untyped]

    small = _thumbnail(image, _COLOUR_SIDE)
    colour = _dominant_colour(small)
    tiny = _thumbnail(small, _HASH_SIDE)
    if tiny.mode == "RGBA":
        white = Image.new("RGB", tiny.size, (255, 255, 255))
        white.paste(tiny, mask=tiny.getchannel("A"))
        tiny = white
    width, height = tiny.size
    data = tiny.tobytes()
    stride = width * 3
    # The package wants rows of [r, g, b]; slices of the bytes serve (at most 32x32 of them).
    rows = [
        [data[y * stride + x * 3 : y * stride + x * 3 + 3] for x in range(width)]
        for y in range(height)
    ]
    hash_ = str(blurhash.encode(rows, components_x=COMPONENTS[0], components_y=COMPONENTS[1]))
    return hash_, colour


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    """``image`` shrunk to at most ``side`` pixels a side, as RGB or RGBA."""
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        # Palette and other modes cannot be box-filtered: resize would pick nearest pixels.
        image = image.convert(
            "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
        )
    scale = min(1.0, side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        # A box filter averages every pixel it covers: the right summary for a blur and colour.
        image = image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    if image.mode in ("L", "LA"):
        image = image.convert("RGBA" if image.mode == "LA" else "RGB")
    return image


def _dominant_colour(image: Image.Image) -> str:
    """The mean colour of the largest of a few colour clusters (median cut), as ``#rrggbb``."""
    paletted = image.convert("RGB").quantize(_CLUSTERS, Image.Quantize.MEDIANCUT)
    counts = _index_counts(paletted)
    if image.mode == "RGBA":
        # Mark the mostly transparent pixels with an index of their own, then leave it out.
        clear = image.getchannel("A").point(lambda a: 255 if a < 128 else 0)
        marked = paletted.copy()
        marked.paste(_CLUSTERS, mask=clear)
        counts = [(n, i) for n, i in _index_counts(marked) if i != _CLUSTERS] or counts
    # Most frequent; on a tie, the lower index, so the answer never depends on dict order.
    _, index = max(counts, key=lambda count: (count[0], -count[1]))
    palette = paletted.getpalette() or []
    red, green, blue = palette[3 * index : 3 * index + 3]
    return f"#{red:02x}{green:02x}{blue:02x}"


def _index_counts(paletted: Image.Image) -> list[tuple[int, int]]:
    """(pixel count, palette index) for each index used in a P image."""
    return [(count, int(index)) for count, index in paletted.getcolors(256) or []]  # type: ignore[arg-type]
