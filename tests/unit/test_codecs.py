"""Tests of the engine's codecs: opening with limits, decoding, colour, metadata and encoding."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms, ImageDraw

from imageproc import InvalidImage, InvalidPipeline
from imageproc.engine._decode import Decoded, decode
from imageproc.engine._encode import encode
from imageproc.engine._metadata import Metadata
from imageproc.engine._open import (
    DEFAULT_FORMATS,
    HEIF_AVAILABLE,
    ImageLimits,
    open_checked,
    source_format,
)
from imageproc.pipeline._colour import WHITE, Colour
from imageproc.pipeline._encoding import Encoding
from imageproc.testing import sample_image
from tests.support.images import INVERSE

LIMITS = ImageLimits()
ORIENTATION = ExifTags.Base.Orientation


# --- helpers -------------------------------------------------------------------------------------


def save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reopen(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def near(actual: object, expected: tuple[int, ...], tolerance: int = 3) -> bool:
    values = actual if isinstance(actual, tuple) else (actual,)
    return len(values) == len(expected) and all(
        abs(int(a) - e) <= tolerance for a, e in zip(values, expected, strict=True)
    )


def only(decoded: Decoded) -> Image.Image:
    (frame,) = decoded.frames
    return frame


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, colour_type: int, depth: int, rows: bytes) -> bytes:
    """A PNG written by hand, for sample layouts Pillow does not write (16-bit RGB, …)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    return png(width, height, 2, 8, b"\x00" * 64)


# ICC profiles built by hand: Pillow can only create sRGB, LAB and XYZ, and none ship with it.


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 78


def _gamma(value: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(value * 256)) + b"\0\0"


D50 = (0.9642, 1.0, 0.8249)


def icc_profile(device: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2.1 profile with ``tags``."""
    table_end = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", table_end + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", table_end + len(body))
        + b"lcms"
        + bytes([2, 0x10, 0, 0])
        + device
        + space
        + pcs
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 28
        + _s15(D50[0])
        + _s15(D50[1])
        + _s15(D50[2])
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def linear_rgb_profile() -> bytes:
    """sRGB's primaries with a linear curve: sample 55 means sRGB 128."""
    return icc_profile(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        [
            (b"desc", _desc("Linear RGB (test)")),
            (b"wtpt", _xyz(*D50)),
            (b"rXYZ", _xyz(0.4361, 0.2225, 0.0139)),
            (b"gXYZ", _xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)),
            (b"rTRC", _gamma(1.0)),
            (b"gTRC", _gamma(1.0)),
            (b"bTRC", _gamma(1.0)),
        ],
    )


def linear_gray_profile() -> bytes:
    return icc_profile(
        b"mntr",
        b"GRAY",
        b"XYZ ",
        [(b"desc", _desc("Linear gray (test)")), (b"wtpt", _xyz(*D50)), (b"kTRC", _gamma(1.0))],
    )


INKS = {"c": (0, 160, 220), "m": (230, 0, 126), "y": (255, 240, 0), "k": (30, 30, 30)}


def cmyk_profile() -> bytes:
    """A printer profile whose inks are not Pillow's naive ones: 100% cyan is sRGB (0, 160, 220).

    One lut8 table (A2B0, CMYK → Lab) with a 2-point grid: each corner is the product of its
    inks, converted to Lab by LittleCMS.
    """
    corners = Image.new("RGB", (16, 1))
    index = 0
    for c in (0, 1):  # the first channel varies slowest in an ICC grid
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = [255.0, 255.0, 255.0]
                    for on, ink in ((c, "c"), (m, "m"), (y, "y"), (k, "k")):
                        if on:
                            rgb = [v * i / 255 for v, i in zip(rgb, INKS[ink], strict=True)]
                    corners.putpixel((index, 0), tuple(round(v) for v in rgb))
                    index += 1
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(corners, to_lab)
    assert lab is not None
    # getpixel gives LittleCMS's 8-bit Lab encoding (a, b offset by 128), as lut8 wants.
    grid = bytes(v for i in range(16) for v in lab.getpixel((i, 0)))  # type: ignore[union-attr]
    ramp = bytes(range(256))
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + identity + ramp * 4 + grid + ramp * 3
    return icc_profile(
        b"prtr",
        b"CMYK",
        b"Lab ",
        [(b"desc", _desc("CMYK (test)")), (b"wtpt", _xyz(*D50)), (b"A2B0", lut)],
    )


def srgb_profile() -> bytes:
    """An sRGB profile; LittleCMS dates it, so two made at different times differ in bytes."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def is_srgb(data: bytes | None) -> bool:
    assert data is not None
    profile = profile_of(data).profile
    return bool(profile.xcolor_space == "RGB " and profile.profile_description.startswith("sRGB"))


def profile_of(data: bytes) -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(data))


# --- the header check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (b"", LIMITS, "empty upload"),
        (b"not an image at all", LIMITS, "not a readable image"),
        (sample_image(64, 64, "PNG"), ImageLimits(max_bytes=10), "over the limit of 10"),
        (sample_image(64, 64, "PNG"), ImageLimits(formats={"JPEG"}), "not a readable image"),
        # A name Pillow has no plugin for is no error, it just matches nothing.
        (sample_image(64, 64, "PNG"), ImageLimits(formats={"NOPE"}), "not a readable image"),
        (png_declaring(8000, 8000), LIMITS, "8000x8000 pixels is over the limit of 50000000"),
        (png_declaring(100, 100), ImageLimits(max_pixels=9999), "over the limit of 9999 pixels"),
        # Past twice Pillow's own default limit Pillow refuses first: still our limit is named.
        (
            png_declaring(50000, 50000),
            LIMITS,
            "^image of 2500000000 pixels is over the limit of 50000000 pixels$",
        ),
    ],
)
def test_open_checked_refuses_from_the_header(
    data: bytes, limits: ImageLimits, message: str
) -> None:
    with pytest.raises(InvalidImage, match=message):
        open_checked(data, limits)


def test_open_checked_reads_no_pixels() -> None:
    with open_checked(png_declaring(4000, 3000), LIMITS) as image:
        assert image.size == (4000, 3000)
        assert image.format == "PNG"


def animated_gif(count: int, size: tuple[int, int] = (30, 20), **options: Any) -> bytes:
    frames = [
        Image.new("RGB", size, (i * 37 % 256, 255 - i * 23 % 256, i * 61 % 256))
        for i in range(count)
    ]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], **options)


def test_frames_of_an_animation_count_together() -> None:
    data = animated_gif(5, (100, 100))
    with pytest.raises(InvalidImage, match="animation of 5 frames of 100x100 pixels"):
        open_checked(data, ImageLimits(max_pixels=40_000))
    with pytest.raises(InvalidImage, match="5 frames is over the limit of 4 frames"):
        decode(data, ImageLimits(max_frames=4))
    # Only the first frame is decoded on request, so only it counts.
    assert only(decode(data, ImageLimits(max_pixels=10_000), all_frames=False)).size == (100, 100)


def test_an_empty_size_is_refused() -> None:
    # GIF's header can declare 0x0; Pillow opens it and leaves the check to us.
    data = b"GIF89a" + struct.pack("<HH", 0, 0) + b"\x00\x00\x00" + b";"
    with pytest.raises(InvalidImage, match=r"empty size 0x0|not a readable image"):
        open_checked(data, LIMITS)


# Pillow warns (a DecompressionBombWarning) from 89 MP before our check runs; pytest would make
# that warning the error. Ignore it here so that these tests prove our own limit refuses.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [12_000, 30_000])
def test_bombs_are_refused_from_the_header(side: int) -> None:
    data = png_declaring(side, side)
    # Our limit, named in our words, whichever refused first (Pillow does past 2 x its own).
    over = rf"({side}x{side}|{side * side}) pixels is over the limit of {LIMITS.max_pixels}"
    with pytest.raises(InvalidImage, match=over):
        open_checked(data, LIMITS)
    with pytest.raises(InvalidImage):
        decode(data, LIMITS)


RSS_PROBE = textwrap.dedent(
    """
    import resource, sys, warnings
    warnings.simplefilter("ignore")
    from imageproc.engine._decode import decode
    from imageproc.engine._open import ImageLimits
    from imageproc.errors import InvalidImage
    from imageproc.testing import sample_image

    def peak_kb():
        # VmHWM, not ru_maxrss: Linux carries the parent's peak over into a child's ru_maxrss
        # (exec keeps the high-water mark of the forked memory), which could hide a bomb.
        try:
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    decode(sample_image(64, 64, "PNG"), ImageLimits())  # plugins and imports in first
    data = bytes.fromhex(sys.stdin.read())
    before = peak_kb()
    try:
        decode(data, ImageLimits())
    except InvalidImage:
        pass
    else:
        sys.exit("not refused")
    print(peak_kb() - before)
    """
)


def gif_declaring(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF whose screen and single frame claim these sizes; the frame is disposed to the
    background, for which Pillow allocates a patch of the frame's size when it opens the file."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    control = b"!\xf9\x04" + bytes([2 << 2 | 1, 10, 0, 0]) + b"\x00"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02\x44\x01\x00"
    return header + control + descriptor + b";"


def webp_declaring(width: int, height: int) -> bytes:
    """An animated WebP of two 16x16 frames on a canvas that claims ``width`` x ``height``."""
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    data = bytearray(save(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        png_declaring(30_000, 30_000),
        png_declaring(12_000, 12_000),
        gif_declaring((12_000, 12_000), (12_000, 12_000)),
        gif_declaring((10, 10), (12_000, 12_000)),
        webp_declaring(12_000, 12_000),
    ],
    ids=["png-30000", "png-12000", "gif-12000", "gif-frame-past-screen", "webp-12000"],
)
def test_bombs_allocate_nothing(data: bytes) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RSS_PROBE],
        input=data.hex(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    grown_kb = int(result.stdout.strip())
    assert grown_kb < 8 * 1024, f"peak RSS grew by {grown_kb} kB"


def test_a_gif_frame_larger_than_its_screen_counts_at_its_real_size() -> None:
    # Pillow grows the canvas to hold a frame that reaches past it; we count the grown size.
    small, large = Image.new("RGB", (10, 10), "red"), Image.new("RGB", (10, 10), "blue")
    data = bytearray(save(small, "GIF", save_all=True, append_images=[large], duration=50))
    # Make the second frame's descriptor claim 3000x3000 (its pixels stay 10x10: LZW ends early).
    second = data.index(b",", data.index(b",") + 1)
    data[second + 5 : second + 9] = struct.pack("<HH", 3000, 3000)
    with pytest.raises(InvalidImage):
        decode(bytes(data), ImageLimits(max_pixels=1_000_000))


# --- modes and colour ----------------------------------------------------------------------------


def test_adobe_cmyk_jpeg_becomes_rgb() -> None:
    # Pillow writes CMYK JPEGs the Adobe way (inverted, with an APP14 marker) and reads them back.
    data = save(Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG", quality=95)
    frame = only(decode(data, LIMITS))
    assert frame.mode == "RGB"
    assert near(frame.getpixel((8, 8)), (255, 0, 255), 6)


def test_cmyk_tiff_becomes_rgb() -> None:
    data = save(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "TIFF")
    frame = only(decode(data, LIMITS))
    assert (frame.mode, frame.getpixel((4, 4))) == ("RGB", (0, 255, 255))


def test_cmyk_jpeg_is_converted_through_its_profile() -> None:
    image = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    data = save(image, "JPEG", quality=100, icc_profile=cmyk_profile())
    decoded = decode(data, LIMITS)
    # The profile's cyan, not Pillow's formula's (0, 255, 255).
    assert near(only(decoded).getpixel((8, 8)), INKS["c"], 12)
    assert is_srgb(decoded.metadata.icc_profile)


def test_palette_with_transparency_becomes_rgba() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(0, (0, 0, 5, 10))
    frame = only(decode(save(image, "PNG", transparency=0), LIMITS))
    assert frame.mode == "RGBA"
    assert frame.getpixel((2, 2))[3] == 0  # type: ignore[index]
    assert frame.getpixel((7, 7)) == (0, 0, 255, 255)


def test_palette_without_transparency_becomes_rgb() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([255, 0, 0, 10, 200, 30] + [0] * 762)
    for fmt in ("PNG", "GIF", "BMP"):
        frame = only(decode(save(image, fmt), LIMITS))
        assert (frame.mode, frame.getpixel((3, 3))) == ("RGB", (10, 200, 30)), fmt


def test_rgb_with_a_colour_key_becomes_rgba() -> None:
    image = Image.new("RGB", (10, 10), (1, 2, 3))
    image.paste((200, 100, 50), (5, 0, 10, 10))
    frame = only(decode(save(image, "PNG", transparency=(1, 2, 3)), LIMITS))
    assert frame.mode == "RGBA"
    assert frame.getpixel((1, 1))[3] == 0  # type: ignore[index]
    assert frame.getpixel((7, 1)) == (200, 100, 50, 255)


@pytest.mark.parametrize(("mode", "value"), [("L", 77), ("LA", (77, 128))])
def test_grayscale_stays_grayscale(mode: str, value: Any) -> None:
    frame = only(decode(save(Image.new(mode, (8, 8), value), "PNG"), LIMITS))
    assert (frame.mode, frame.getpixel((4, 4))) == (mode, value)


def test_one_bit_becomes_l() -> None:
    image = Image.new("1", (8, 8), 0)
    image.paste(1, (4, 0, 8, 8))
    frame = only(decode(save(image, "PNG"), LIMITS))
    assert (frame.mode, frame.getpixel((1, 1)), frame.getpixel((6, 1))) == ("L", 0, 255)


def test_sixteen_bit_gray_is_scaled_not_clipped() -> None:
    rows = b"\x00" + struct.pack(">4H", 0, 257, 32768, 65535)
    frame = only(decode(png(4, 1, 0, 16, rows), LIMITS))
    assert frame.mode == "L"
    assert [frame.getpixel((x, 0)) for x in range(4)] == [0, 1, 128, 255]


def test_sixteen_bit_gray_tiff_and_32_bit_integer_tiff() -> None:
    wide = Image.new("I;16B", (2, 1))
    wide.putpixel((1, 0), 65535)
    assert list(only(decode(save(wide, "TIFF"), LIMITS)).tobytes()) == [0, 255]
    # Values beyond 16 bits: the range found is stretched over 0-255.
    deep = Image.new("I", (3, 1))
    for x, v in enumerate((100_000, 150_000, 200_000)):
        deep.putpixel((x, 0), v)
    stretched = list(only(decode(save(deep, "TIFF"), LIMITS)).tobytes())
    assert near(tuple(stretched), (0, 128, 255), 1)


def test_sixteen_bit_rgb_and_rgba() -> None:
    rgb = png(1, 1, 2, 16, b"\x00" + struct.pack(">3H", 65535, 32768, 0))
    assert only(decode(rgb, LIMITS)).getpixel((0, 0)) == (255, 128, 0)
    rgba = png(1, 1, 6, 16, b"\x00" + struct.pack(">4H", 65535, 32768, 0, 32768))
    frame = only(decode(rgba, LIMITS))
    assert (frame.mode, frame.getpixel((0, 0))) == ("RGBA", (255, 128, 0, 128))


def test_float_tiff_becomes_l() -> None:
    image = Image.new("F", (3, 1))
    for x, v in enumerate((0.0, 0.5, 1.0)):
        image.putpixel((x, 0), v)
    frame = only(decode(save(image, "TIFF"), LIMITS))
    assert (frame.mode, list(frame.tobytes())) == ("L", [0, 128, 255])


def test_lab_tiff_becomes_rgb() -> None:
    image = Image.new("LAB", (4, 1), (255, 128, 128))  # L* 100, neutral: white
    frame = only(decode(save(image, "TIFF"), LIMITS))
    assert frame.mode == "RGB"
    assert near(frame.getpixel((1, 0)), (255, 255, 255), 2)


def test_rgba_stays_rgba() -> None:
    frame = only(
        decode(save(Image.new("RGBA", (4, 4), (10, 20, 30, 40)), "WEBP", lossless=True), LIMITS)
    )
    assert (frame.mode, frame.getpixel((1, 1))) == ("RGBA", (10, 20, 30, 40))


def test_a_non_srgb_profile_is_converted() -> None:
    data = save(Image.new("RGB", (8, 8), (55, 55, 55)), "PNG", icc_profile=linear_rgb_profile())
    decoded = decode(data, LIMITS)
    assert near(only(decoded).getpixel((4, 4)), (128, 128, 128), 1)
    assert is_srgb(decoded.metadata.icc_profile)
    # The same bytes in every process, whenever it made them: outputs are reproducible.
    again = decode(data, LIMITS).metadata.icc_profile
    assert again == decoded.metadata.icc_profile
    code = (
        "import sys; from imageproc.engine._decode import decode;"
        " from imageproc.engine._open import ImageLimits;"
        " decoded = decode(sys.stdin.buffer.read(), ImageLimits());"
        " sys.stdout.write(decoded.metadata.icc_profile.hex())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], input=data, capture_output=True, check=True, timeout=60
    )
    assert bytes.fromhex(other.stdout.decode()) == again


def test_conversion_keeps_alpha() -> None:
    image = Image.new("RGBA", (8, 8), (55, 55, 55, 77))
    frame = only(decode(save(image, "PNG", icc_profile=linear_rgb_profile()), LIMITS))
    assert near(frame.getpixel((4, 4)), (128, 128, 128, 77), 1)


def test_a_gray_profile_is_converted_and_stays_gray() -> None:
    data = save(Image.new("L", (8, 8), 55), "PNG", icc_profile=linear_gray_profile())
    frame = only(decode(data, LIMITS))
    assert frame.mode == "L"
    assert near(frame.getpixel((4, 4)), (128,), 1)
    image = Image.new("LA", (8, 8), (55, 200))
    frame = only(decode(save(image, "PNG", icc_profile=linear_gray_profile()), LIMITS))
    assert frame.mode == "LA"
    assert near(frame.getpixel((4, 4)), (128, 200), 1)


def test_an_srgb_image_passes_unchanged_and_keeps_its_profile() -> None:
    image = Image.new("RGB", (8, 8), (55, 155, 255))
    profile = srgb_profile()
    decoded = decode(save(image, "PNG", icc_profile=profile), LIMITS)
    assert only(decoded).getpixel((4, 4)) == (55, 155, 255)
    assert decoded.metadata.icc_profile == profile


@pytest.mark.parametrize(
    "profile", [b"garbage, not a profile" * 10, b"", None], ids=["broken", "empty", "none"]
)
def test_unusable_profiles_are_ignored(profile: bytes | None) -> None:
    options = {} if profile is None else {"icc_profile": profile}
    decoded = decode(save(Image.new("RGB", (8, 8), (55, 155, 255)), "PNG", **options), LIMITS)
    assert only(decoded).getpixel((4, 4)) == (55, 155, 255)
    assert decoded.metadata.icc_profile is None


def test_a_profile_of_another_colour_space_is_ignored() -> None:
    data = save(Image.new("RGB", (8, 8), (55, 155, 255)), "PNG", icc_profile=cmyk_profile())
    assert only(decode(data, LIMITS)).getpixel((4, 4)) == (55, 155, 255)


# --- orientation and draft -----------------------------------------------------------------------


def oriented(orientation: int, fmt: str = "JPEG", size: tuple[int, int] = (60, 40)) -> bytes:
    upright = Image.new("RGB", size, (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, size[0] // 2, size[1] // 2))  # red top-left quarter
    transpose = INVERSE[orientation]
    stored = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[ExifTags.Base.Make] = "imageproc test"
    return save(stored, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_orientation_comes_out_upright(orientation: int, fmt: str) -> None:
    decoded = decode(oriented(orientation, fmt), LIMITS)
    frame = only(decoded)
    assert frame.size == (60, 40)
    assert near(frame.getpixel((5, 5)), (255, 0, 0), 40)
    assert near(frame.getpixel((55, 35)), (0, 0, 255), 40)
    assert decoded.metadata.exif is not None
    exif = Image.Exif()
    exif.load(decoded.metadata.exif)
    assert exif[ORIENTATION] == 1
    assert exif[ExifTags.Base.Make] == "imageproc test"


def test_draft_shrinks_a_jpeg_on_load() -> None:
    data = sample_image(1600, 1200, "JPEG")
    assert only(decode(data, LIMITS, draft=(400, 300))).size == (400, 300)
    # The largest reduction that still covers the size asked for.
    assert only(decode(data, LIMITS, draft=(401, 300))).size == (800, 600)
    assert only(decode(sample_image(1600, 1200, "PNG"), LIMITS, draft=(400, 300))).size == (
        1600,
        1200,
    )


def test_draft_is_in_stored_orientation() -> None:
    data = oriented(6, "JPEG", (800, 400))  # stored 400x800 upright 800x400... turned by EXIF
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == (400, 800)
    frame = only(decode(data, LIMITS, draft=(100, 200)))
    assert frame.size == (200, 100)
    assert near(frame.getpixel((10, 10)), (255, 0, 0), 40)


# --- transparency and grayscale out --------------------------------------------------------------

HALF = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
HALF.paste((0, 200, 0, 255), (10, 0, 20, 10))


@pytest.mark.parametrize("fmt", ["png", "webp", "avif", "tiff", "gif"])
def test_transparency_is_kept(fmt: str) -> None:
    frame = only(decode(encode([HALF], Encoding(fmt)), LIMITS))
    assert frame.mode == "RGBA"
    assert frame.getpixel((3, 5))[3] == 0  # type: ignore[index]
    assert near(frame.getpixel((15, 5)), (0, 200, 0, 255), 8)


@pytest.mark.parametrize(
    ("background", "expected"), [(WHITE, (255, 255, 255)), (Colour(0, 128, 255), (0, 128, 255))]
)
def test_jpeg_flattens_onto_the_background(background: Colour, expected: tuple[int, ...]) -> None:
    out = reopen(encode([HALF], Encoding("jpeg", quality=95), background=background))
    assert out.mode == "RGB"
    assert near(out.getpixel((3, 5)), expected, 4)  # type: ignore[arg-type]
    assert near(out.getpixel((16, 5)), (0, 200, 0), 6)  # type: ignore[arg-type]


def test_gray_with_alpha_flattens_to_gray_or_colour() -> None:
    image = Image.new("LA", (8, 8), (0, 0))
    out = reopen(encode([image], Encoding("jpeg"), background=Colour(128, 128, 128)))
    assert (out.mode, out.getpixel((4, 4))) == ("L", 128)
    out = reopen(encode([image], Encoding("jpeg"), background=Colour(255, 0, 0)))
    assert out.mode == "RGB"
    assert near(out.getpixel((4, 4)), (254, 0, 0), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("jpeg", "L"), ("png", "L"), ("avif", "L"), ("tiff", "L"), ("gif", "L"), ("webp", "RGB")],
)
def test_grayscale_output_where_the_format_has_it(fmt: str, mode: str) -> None:
    out = reopen(encode([Image.new("L", (16, 16), 90)], Encoding(fmt)))
    assert out.mode == mode
    assert near(out.getpixel((8, 8)), (90,) * len(mode), 3)  # type: ignore[arg-type]


def test_encoding_options() -> None:
    data = sample_image(200, 150, "PNG")
    frame = only(decode(data, LIMITS))
    small = encode([frame], Encoding("jpeg", quality=20))
    large = encode([frame], Encoding("jpeg", quality=95))
    assert len(small) < len(large)
    assert "progressive" in reopen(encode([frame], Encoding("jpeg", progressive=True))).info
    lossless = reopen(encode([frame], Encoding("webp", lossless=True)))
    assert lossless.tobytes() == frame.tobytes()
    assert reopen(encode([frame], Encoding("tiff"))).info["compression"] == "tiff_adobe_deflate"


def test_encode_refuses_misuse() -> None:
    frame = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="resolve"):
        encode([frame], Encoding("original"))
    with pytest.raises(ValueError, match="no frames"):
        encode([], Encoding("png"))
    with pytest.raises(ValueError, match="cannot hold 2 frames"):
        encode([frame, frame], Encoding("jpeg"))
    with pytest.raises(ValueError, match="1 durations for 2 frames"):
        encode([frame, frame], Encoding("gif"), durations=[10])
    with pytest.raises(InvalidPipeline, match="16383"):
        encode([Image.new("RGB", (16_384, 1))], Encoding("webp"))


# --- animation -----------------------------------------------------------------------------------


def test_animated_gif_to_animated_webp_and_gif() -> None:
    data = animated_gif(4, duration=[100, 200, 300, 400], loop=0)
    decoded = decode(data, LIMITS)
    assert (len(decoded.frames), decoded.durations, decoded.loop) == (4, (100, 200, 300, 400), 0)
    colours = [frame.getpixel((5, 5)) for frame in decoded.frames]
    for fmt in ("webp", "gif"):
        out = encode(decoded.frames, Encoding(fmt), durations=decoded.durations, loop=decoded.loop)
        again = decode(out, LIMITS)
        assert again.format == fmt.upper()
        assert (again.durations, again.loop) == (decoded.durations, 0)
        for frame, colour in zip(again.frames, colours, strict=True):
            assert near(frame.getpixel((5, 5)), colour, 8)  # type: ignore[arg-type]


def test_first_frame_only() -> None:
    decoded = decode(animated_gif(3, duration=50), LIMITS, all_frames=False)
    assert (len(decoded.frames), decoded.durations, decoded.loop) == (1, (), None)


@pytest.mark.parametrize(
    ("netscape", "plays"), [(None, 1), (0, 0), (1, 2), (4, 5)], ids=["once", "forever", "1", "4"]
)
def test_gif_loop_counts_survive(netscape: int | None, plays: int) -> None:
    options = {} if netscape is None else {"loop": netscape}
    decoded = decode(animated_gif(2, duration=40, **options), LIMITS)
    assert decoded.loop == plays
    gif = decode(encode(decoded.frames, Encoding("gif"), loop=decoded.loop), LIMITS)
    webp = decode(encode(decoded.frames, Encoding("webp"), loop=decoded.loop), LIMITS)
    assert gif.loop == webp.loop == plays


def test_an_animation_with_transparency() -> None:
    first = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    first.paste((255, 0, 0, 255), (0, 0, 10, 10))
    second = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    second.paste((0, 0, 255, 255), (10, 0, 20, 10))
    for fmt in ("gif", "webp"):
        out = decode(encode([first, second], Encoding(fmt, lossless=fmt == "webp")), LIMITS)
        one, two = out.frames
        assert one.mode == two.mode == "RGBA"
        assert one.getpixel((15, 5))[3] == 0  # type: ignore[index]
        # The first frame must not show through the second's transparent half.
        assert two.getpixel((5, 5))[3] == 0, fmt  # type: ignore[index]
        assert near(two.getpixel((15, 5)), (0, 0, 255, 255), 4)


def test_an_animated_webp_is_read() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "lime", "blue")]
    data = save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=70, loop=3)
    decoded = decode(data, LIMITS)
    assert (len(decoded.frames), decoded.durations, decoded.loop) == (3, (70, 70, 70), 3)


def test_an_animated_png_is_read() -> None:
    frames = [Image.new("RGBA", (16, 16), c) for c in ((255, 0, 0, 255), (0, 0, 255, 128))]
    data = save(
        frames[0], "PNG", save_all=True, append_images=frames[1:], duration=[30, 60], loop=2
    )
    decoded = decode(data, LIMITS)
    assert (decoded.format, decoded.durations, decoded.loop) == ("PNG", (30, 60), 2)
    assert [f.getpixel((8, 8)) for f in decoded.frames] == [(255, 0, 0, 255), (0, 0, 255, 128)]


def test_an_mpo_is_called_jpeg() -> None:
    frames = [Image.new("RGB", (32, 24), c) for c in ("red", "blue")]
    data = save(frames[0], "MPO", save_all=True, append_images=frames[1:])
    with open_checked(data, LIMITS) as image:
        assert (image.format, source_format(image)) == ("MPO", "JPEG")
    decoded = decode(data, LIMITS, draft=(16, 12))
    assert (decoded.format, only(decoded).size) == ("JPEG", (16, 12))
    assert near(only(decoded).getpixel((8, 6)), (255, 0, 0), 8)


# --- metadata ------------------------------------------------------------------------------------


def with_metadata() -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 3
    exif[ExifTags.Base.Make] = "imageproc test"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><tiff:Orientation>3</tiff:Orientation></x:xmpmeta>'
    image = Image.new("RGB", (32, 24), (200, 100, 50))
    return save(image, "JPEG", exif=exif, icc_profile=srgb_profile(), xmp=xmp, comment=b"hello")


def metadata_in(data: bytes) -> dict[str, Any]:
    out = reopen(data)
    return {
        "exif": dict(out.getexif()),
        "icc": out.info.get("icc_profile"),
        "xmp": out.info.get("xmp") or out.info.get("XML:com.adobe.xmp"),
        "comment": out.info.get("comment"),
    }


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "tiff", "gif"])
def test_metadata_is_stripped_by_default(fmt: str) -> None:
    decoded = decode(with_metadata(), LIMITS)
    assert decoded.metadata.exif
    assert decoded.metadata.icc_profile
    assert decoded.metadata.xmp
    assert decoded.frames[0].info == {}
    found = metadata_in(encode(decoded.frames, Encoding(fmt)))
    assert not found["icc"]
    assert not found["xmp"]
    assert not found["comment"]
    # TIFF's own tags are not metadata; what EXIF adds is.
    assert ExifTags.Base.Make not in found["exif"]
    assert ORIENTATION not in found["exif"]


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "tiff"])
def test_metadata_is_kept_on_request(fmt: str) -> None:
    decoded = decode(with_metadata(), LIMITS)
    found = metadata_in(encode(decoded.frames, Encoding(fmt), metadata=decoded.metadata))
    assert found["exif"][ExifTags.Base.Make] == "imageproc test"
    assert found["exif"][ORIENTATION] == 1
    assert is_srgb(found["icc"])
    if fmt != "tiff":  # Pillow writes no XMP into TIFF from an EXIF block
        xmp = found["xmp"]
        assert b"<tiff:Orientation>1</tiff:Orientation>" in (
            xmp if isinstance(xmp, bytes) else xmp.encode()
        )


def test_a_tiffs_own_layout_is_not_kept_as_exif() -> None:
    image = Image.new("RGB", (16, 8), (1, 2, 3))
    data = save(image, "TIFF", compression="tiff_deflate", tiffinfo={ExifTags.Base.Make: "x"})
    metadata = decode(data, LIMITS).metadata
    assert metadata.exif is not None
    exif = Image.Exif()
    exif.load(metadata.exif)
    assert exif[ExifTags.Base.Make] == "x"
    assert not {256, 257, 259, 273, 279} & set(exif)


def test_metadata_too_long_for_a_jpeg_marker_is_dropped() -> None:
    metadata = Metadata(exif=b"Exif\0\0" + b"\0" * 70_000, xmp=b"<x/>" * 20_000)
    out = reopen(encode([Image.new("RGB", (4, 4))], Encoding("jpeg"), metadata=metadata))
    assert "exif" not in out.info
    assert "xmp" not in out.info


def test_an_rgb_profile_is_not_written_into_a_gray_output() -> None:
    metadata = Metadata(icc_profile=srgb_profile())
    out = reopen(encode([Image.new("L", (4, 4))], Encoding("png"), metadata=metadata))
    assert "icc_profile" not in out.info


# --- damaged files -------------------------------------------------------------------------------

DAMAGEABLE = ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF"]


@pytest.fixture(scope="module")
def valid_files() -> dict[str, bytes]:
    return {fmt: sample_image(48, 32, fmt) for fmt in DAMAGEABLE}


@pytest.mark.parametrize("fmt", DAMAGEABLE)
def test_truncated_and_garbled_files_are_invalid(fmt: str, valid_files: dict[str, bytes]) -> None:
    data = valid_files[fmt]
    assert only(decode(data, LIMITS)).size == (48, 32)
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 2], LIMITS)
    with pytest.raises(InvalidImage):
        decode(data[:16], LIMITS)
    with pytest.raises(InvalidImage):
        decode(data[:12] + b"garbage" * 100, LIMITS)


@pytest.mark.parametrize("fmt", DAMAGEABLE)
@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_damage_gives_an_image_or_invalid_image(
    fmt: str, valid_files: dict[str, bytes], data: st.DataObject
) -> None:
    # Positions are drawn as fractions of the file, so that examples do not depend on its length
    # (AVIF encoding is not byte-for-byte repeatable across runs).
    original = valid_files[fmt]
    fraction = st.integers(0, 2**16 - 1)
    damaged = bytearray(original[: 1 + data.draw(fraction) * len(original) // 2**16])
    for where, mask in data.draw(st.lists(st.tuples(fraction, st.integers(1, 255)), max_size=6)):
        damaged[where * len(damaged) // 2**16] ^= mask
    try:
        decoded = decode(bytes(damaged), LIMITS)
    except InvalidImage as error:
        message = error.message
    else:
        assert decoded.frames[0].mode in ("RGB", "RGBA", "L", "LA")
        return
    assert not re.search(r"at 0x[0-9a-fA-F]+|BytesIO", message)


def test_error_messages_do_not_name_memory_objects() -> None:
    with pytest.raises(InvalidImage) as info:
        decode(b"hello, this is not an image", LIMITS)
    assert "0x" not in info.value.message
    assert "BytesIO" not in info.value.message


# --- AVIF and HEIF -------------------------------------------------------------------------------


def test_avif_round_trip() -> None:
    source = only(decode(sample_image(96, 64, "PNG"), LIMITS))
    decoded = decode(encode([source], Encoding("avif", quality=90)), LIMITS)
    assert decoded.format == "AVIF"
    frame = only(decoded)
    assert (frame.mode, frame.size) == ("RGB", (96, 64))
    assert near(frame.getpixel((20, 12)), source.getpixel((20, 12)), 12)  # type: ignore[arg-type]


def test_heif_is_allowed_exactly_when_pillow_heif_is_installed() -> None:
    assert ("HEIF" in DEFAULT_FORMATS) is HEIF_AVAILABLE
    assert "AVIF" in DEFAULT_FORMATS


def test_importing_imageproc_does_not_import_pillow_heif() -> None:
    code = (
        "import sys, imageproc, imageproc.engine._decode, imageproc.engine._encode;"
        " print('pillow_heif' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(not HEIF_AVAILABLE, reason="pillow-heif (the heif extra) is not installed")
def test_heif_round_trip() -> None:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    upright = Image.new("RGB", (64, 48), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 32, 24))
    decoded = decode(save(upright, "HEIF", quality=90), LIMITS)
    assert decoded.format == "HEIF"
    frame = only(decoded)
    assert (frame.mode, frame.size) == ("RGB", (64, 48))
    assert near(frame.getpixel((5, 5)), (255, 0, 0), 20)
    assert near(frame.getpixel((60, 40)), (0, 0, 255), 20)
    with pytest.raises(InvalidImage):
        decode(save(upright, "HEIF"), ImageLimits(formats={"JPEG", "PNG"}))


def test_decoded_frames_are_plain_images_without_metadata() -> None:
    decoded = decode(with_metadata(), LIMITS)
    frame = only(decoded)
    assert type(frame) is Image.Image
    assert frame.info == {}
    draw = ImageDraw.Draw(frame)  # and writable
    draw.point((0, 0), fill=(0, 0, 0))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_refusals_say_what_is_wrong_in_plain_words(fmt: str) -> None:
    # Not Pillow's internals ("Truncated File Read", "cannot identify image file <_io…>").
    data = sample_image(400, 300, fmt)
    with pytest.raises(InvalidImage) as cut:
        decode(data[: len(data) // 2], LIMITS)
    assert cut.value.message == "corrupt or truncated image: the file ends before the image does"
    with pytest.raises(InvalidImage) as garbage:
        open_checked(b"hello, this is not an image", LIMITS)
    assert garbage.value.message == "not a readable image"
