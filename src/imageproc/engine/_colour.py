"""Colour management of decoded pixels: embedded ICC profiles converted to sRGB with LittleCMS
(a broken or unusable profile is ignored, as browsers do), Lab to sRGB, 16-bit, 32-bit and float
grayscale scaled to 8 bits, and every mode brought to one of ``RGB``, ``RGBA``, ``L`` or ``LA``
(:func:`normalise`).
"""

from __future__ import annotations

import hashlib
import io
import struct
from functools import cache
from typing import Final, cast

import attrs
from PIL import Image, ImageCms

__all__ = ["Profile", "normalise"]

_SIXTEEN_BIT: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


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
class Profile:
    """An embedded ICC profile we can use: its colour space and whether it already is sRGB."""

    data: bytes
    cms: ImageCms.ImageCmsProfile
    space: str
    is_srgb: bool

    @classmethod
    def read(cls, data: object) -> Profile | None:
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


def _transform(profile: Profile, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
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


def _to_srgb(image: Image.Image, profile: Profile) -> Image.Image:
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


def normalise(image: Image.Image, profile: Profile | None) -> Image.Image:
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
