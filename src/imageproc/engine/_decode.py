"""Decoding: :func:`decode` turns an upload into :class:`Decoded` frames that every operation can
rely on: upright (EXIF orientation applied), in sRGB (embedded ICC profiles converted, see
``_colour``), and in one of four modes, ``RGB``, ``RGBA``, ``L`` or ``LA``; the metadata that
``keep-metadata`` may write back is kept aside in :class:`~imageproc.engine._metadata.Metadata`.
An animation is decoded frame by frame, with its durations and loop count.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
from PIL import ExifTags, Image, ImageFile

from imageproc.engine._colour import Profile, normalise
from imageproc.engine._metadata import Metadata, bare, upright_exif, upright_xmp
from imageproc.engine._open import FORMAT_NAMES, ImageLimits, mapped_errors, open_counted
from imageproc.errors import ImageTooLarge

__all__ = ["Decoded", "decode"]

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
    image, frame_count = open_counted(data, limits, all_frames=all_frames)
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
        profile = Profile.read(image.info.get("icc_profile"))
        exif = image.getexif()
        orientation = exif.get(ExifTags.Base.Orientation)
        metadata = Metadata(
            exif=upright_exif(exif),
            icc_profile=profile.output_bytes() if profile else None,
            xmp=upright_xmp(image.info.get("xmp")),
        )
        if frame_count > 1:
            frames, durations = _decode_frames(image, frame_count, profile, limits)
            loop: int | None = _plays(pillow_format, image.info)
        else:
            frames, durations, loop = [bare(normalise(image, profile))], [], None
        transpose = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
        if transpose is not None:
            frames = [frame.transpose(transpose) for frame in frames]
    return Decoded(
        frames=tuple(frames),
        durations=tuple(durations),
        loop=loop,
        format=FORMAT_NAMES.get(pillow_format, pillow_format),
        metadata=metadata,
    )


def _decode_frames(
    image: Image.Image, count: int, profile: Profile | None, limits: ImageLimits
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
        frame = normalise(image, profile)
        # The next frame is decoded into (and composited onto) this one's memory: keep a copy.
        frames.append(bare(image.copy() if frame is image else frame))
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
