"""Encoding: :func:`encode` writes frames in an output :class:`~imageproc.Encoding`, as an
animation where the format has them, with each format's options (quality, speed, compression),
transparency flattened or kept as the format allows, and the metadata asked for;
:func:`check_side` refuses an image larger than the format can hold.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Final

from PIL import Image, features

from imageproc.engine._colour import normalise
from imageproc.engine._metadata import Metadata, bare, metadata_options
from imageproc.errors import ConfigurationError, InvalidPipeline
from imageproc.pipeline._colour import WHITE, Colour
from imageproc.pipeline._encoding import Encoding

__all__ = ["check_side", "encode"]

#: Largest side each encoder can write; larger outputs are refused before encoding.
_MAX_SIDE: Final = {"JPEG": 65_500, "WEBP": 16_383, "GIF": 65_535}
#: Milliseconds per frame when an animation is encoded without durations.
_DEFAULT_DURATION: Final = 100


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
        options.update(metadata_options(encoding.pillow_format, mode, metadata))
    return options


def _for_format(frame: Image.Image, pillow_format: str, background: Colour) -> Image.Image:
    """``frame`` in a mode ``pillow_format`` writes, without metadata in ``info``."""
    frame.load()
    if frame.mode not in ("RGB", "RGBA", "L", "LA"):
        frame = normalise(frame, None)
    alpha = frame.mode in ("RGBA", "LA")
    if pillow_format == "JPEG" and alpha:
        frame = _flatten(frame, background)
    elif pillow_format == "WEBP" and frame.mode in ("L", "LA"):
        frame = frame.convert("RGBA" if alpha else "RGB")  # WebP has no grayscale
    elif pillow_format == "AVIF" and frame.mode == "LA":
        frame = frame.convert("RGBA")  # AVIF grayscale with alpha is not written by Pillow
    elif pillow_format == "GIF" and frame.mode != "L":
        return _for_gif(frame, background)
    return bare(frame)


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
        return bare(frame.quantize(256, method))
    paletted = _flatten(frame, background).convert("RGB").quantize(255, method)
    clear = frame.getchannel("A").point(lambda a: 255 if a < 128 else 0)
    paletted.paste(255, mask=clear)
    palette = paletted.getpalette() or []
    paletted.putpalette(palette + [0] * (768 - len(palette)))
    paletted.info = {"transparency": 255}
    return paletted
