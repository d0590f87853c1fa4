"""Tests of ``engine._imaging``: probe, render, shrink-on-load and the variant plan."""

from __future__ import annotations

import functools
import io
import math
import random
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from imageproc import ImageLimits, InvalidImage, InvalidPipeline, Pipeline
from imageproc.engine._imaging import check_output_sizes, probe, render
from imageproc.testing import sample_image
from tests.support.images import INVERSE


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_probe_reads_the_header() -> None:
    data = sample_image(640, 480, "PNG")
    info = probe(data)
    assert (info.format, info.width, info.height, info.bytes) == ("PNG", 640, 480, len(data))
    assert len(info.sha256) == 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty upload"),
        (b"hello, this is not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n", "not a readable image"),
    ],
)
def test_probe_refuses_non_images(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        probe(data)


def test_probe_refuses_too_many_pixels_from_the_header() -> None:
    with pytest.raises(InvalidImage, match="8000x8000 pixels is over the limit of 50000000"):
        probe(png_declaring(8000, 8000))
    with pytest.raises(InvalidImage):
        probe(png_declaring(30000, 30000))


def test_probe_refuses_large_uploads_and_other_formats() -> None:
    data = sample_image(64, 64, "PNG")
    with pytest.raises(InvalidImage, match="over the limit of 10"):
        probe(data, ImageLimits(max_bytes=10))
    with pytest.raises(InvalidImage, match="not a readable image"):
        probe(data, ImageLimits(formats={"JPEG"}))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_files_fail_at_decode(fmt: str) -> None:
    data = sample_image(400, 300, fmt)
    truncated = data[: len(data) // 2]
    # WebP's decoder refuses at the header already; the others only once pixels are decoded.
    with pytest.raises(InvalidImage, match=r"corrupt or truncated|not a readable image"):
        render(truncated, Pipeline.parse("png"))


def test_render_every_variant_from_one_decode() -> None:
    data = sample_image(2400, 1600)
    pipeline = Pipeline.parse("thumb=fit:256x256,webp:q80;big=resize:1000x,png;same=jpeg")
    results = render(data, pipeline)
    assert [(r.name, r.format, r.width, r.height) for r in results] == [
        ("thumb", "webp", 256, 171),
        ("big", "png", 1000, 667),
        ("same", "jpeg", 2400, 1600),
    ]
    for result, pillow_format in zip(results, ["WEBP", "PNG", "JPEG"], strict=True):
        with Image.open(io.BytesIO(result.data)) as image:
            assert (image.format, image.size) == (pillow_format, (result.width, result.height))


def test_transparency_is_flattened_onto_white_for_jpeg_and_kept_for_png() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    jpeg, png = render(buffer.getvalue(), Pipeline.parse("a=jpeg;b=png"))
    with Image.open(io.BytesIO(jpeg.data)) as out:
        assert out.mode == "RGB"
        assert min(out.getpixel((10, 10))) > 245  # type: ignore[arg-type]
    with Image.open(io.BytesIO(png.data)) as out:
        assert out.mode == "RGBA"
        assert out.getpixel((10, 10))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation: int) -> None:
    upright = Image.new("RGB", (60, 40), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 30, 20))  # red in the top-left quarter only
    transpose = INVERSE[orientation]
    stored = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif)

    (result,) = render(buffer.getvalue(), Pipeline.parse("png"))
    assert (result.width, result.height) == (60, 40)
    with Image.open(io.BytesIO(result.data)) as out:
        red, _, blue = out.getpixel((5, 5))  # type: ignore[misc]
        assert red > 200
        assert blue < 60
        red, _, blue = out.getpixel((55, 35))  # type: ignore[misc]
        assert red < 60
        assert blue > 200


def test_render_refuses_outputs_over_the_pixel_limit() -> None:
    from imageproc import InvalidPipeline

    data = sample_image(16, 2000, "PNG")
    with pytest.raises(InvalidPipeline, match="over the limit of 50000000 pixels"):
        render(data, Pipeline.parse("resize:4096x,upscale,png"))


def test_what_the_header_shows_impossible_is_refused_before_storing() -> None:
    limits = ImageLimits()
    wide = Pipeline.parse("w=webp")  # WebP holds at most 16383 pixels a side
    with pytest.raises(InvalidPipeline, match="variant 'w': a 17000x100 image is larger than webp"):
        check_output_sizes(wide, 17000, 100, limits, input_format="PNG")
    check_output_sizes(Pipeline.parse("w=png"), 17000, 100, limits, input_format="PNG")
    check_output_sizes(Pipeline.parse("w=fit:4000x4000,webp"), 17000, 100, limits)
    # `original` is checked against the input's format when it is known.
    with pytest.raises(InvalidPipeline, match="larger than gif can hold"):
        check_output_sizes(Pipeline.parse("o=original"), 70000, 10, limits, input_format="GIF")
    # A crop outside the image whichever way EXIF turns it is refused; one outside only one
    # way is left to the worker, which knows the orientation.
    with pytest.raises(InvalidPipeline, match="'c': crop:700,0,10,10 starts outside the"):
        check_output_sizes(Pipeline.parse("c=crop:700,0,10,10"), 600, 400, limits)
    check_output_sizes(Pipeline.parse("c=crop:500,0,10,10"), 600, 400, limits)
    with pytest.raises(InvalidPipeline, match="starts outside the 600x400 image"):
        render(sample_image(600, 400), Pipeline.parse("c=crop:0,500,10,10,png"))


def test_error_messages_do_not_name_memory_objects() -> None:
    with pytest.raises(InvalidImage) as info:
        probe(b"hello, this is not an image")
    assert "0x" not in info.value.message
    assert "BytesIO" not in info.value.message


@functools.cache
def detailed_picture(width: int, height: int, *, grain: bool = False) -> Image.Image:
    """Fine detail everywhere (a Mandelbrot set per channel), so resampling shows; with ``grain``,
    12 % of seeded noise on every pixel as well (the hardest case for a box-like filter)."""
    channels = [
        Image.effect_mandelbrot((width, height), (-2.0 + i * 0.1, -1.2, 1.0, 1.2), 40)
        for i in range(3)
    ]
    picture = Image.merge("RGB", channels)
    if grain:
        noise = Image.frombytes("L", (width, height), random.Random(7).randbytes(width * height))
        picture = Image.blend(picture, Image.merge("RGB", [noise] * 3), 0.12)
    return picture


@functools.cache
def detailed_jpeg(
    width: int, height: int, *, orientation: int | None = None, grain: bool = False
) -> bytes:
    """:func:`detailed_picture` as a JPEG (quality 92)."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    detailed_picture(width, height, grain=grain).save(buffer, "JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def psnr(a: Image.Image, b: Image.Image) -> float:
    from PIL import ImageChops, ImageStat

    rms = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).rms
    mse = sum(r * r for r in rms) / len(rms)
    return float("inf") if mse == 0 else 20 * math.log10(255 / math.sqrt(mse))


def test_draft_scale_allows_what_every_variant_can_afford() -> None:
    from imageproc.engine._imaging import draft_scale

    def scale(text: str, width: int = 4000, height: int = 3000) -> int:
        return draft_scale(Pipeline.parse(text), width, height)

    assert scale("fit:256x256") == 4  # 1/8 would leave 1.95x, under the 2.5x that 1/8 needs
    assert scale("fit:256x256", 6000, 4000) == 8  # 750x500 leaves 2.93x
    assert scale("fit:200x200") == 8  # 500x375 leaves 2.5x
    assert scale("fit:201x201") == 4
    assert scale("fit:1600x1600") == 2  # 2000x1500 leaves 1.25x: enough at 1/2
    assert scale("fit:1601x1601") == 1  # 1/2 would leave less than 1.25x
    assert scale("a=fit:256x256;b=fit:1024x1024;c=fit:1600x1600,jpeg", 6000, 4000) == 2
    assert scale("a=fit:256x256;b=fill:500x500") == 2  # fill covers: 3000 -> 500
    assert scale("a=fit:256x256;b=pad:300x300") == 4
    assert scale("a=fit:256x256;b=png") == 1  # one variant needs every pixel
    assert scale("crop:0,0,10,10,fit:5x5") == 1
    assert scale("resize:8000x,upscale") == 1


def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Sizes of the images ``render`` decodes from now on, in order."""
    from imageproc.engine import _imaging as imaging

    sizes: list[tuple[int, int]] = []
    real = imaging.decode

    def spy(*args: Any, **kwargs: Any) -> Any:
        decoded = real(*args, **kwargs)
        sizes.append(decoded.size)
        return decoded

    monkeypatch.setattr(imaging, "decode", spy)
    return sizes


def resamplings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(from, to) sizes of every scaling ``render`` does from now on, in order."""
    from imageproc.engine import _transforms as transforms

    calls: list[tuple[tuple[int, int], tuple[int, int]]] = []
    real = transforms._resize

    def spy(image: Image.Image, size: tuple[int, int], box: Any = None) -> Image.Image:
        calls.append((image.size, size))
        return real(image, size, box)

    monkeypatch.setattr(transforms, "_resize", spy)
    return calls


@pytest.mark.parametrize(
    ("pipeline", "decoded", "steps"),
    [
        ("fit:100x100,png", (250, 188), [((250, 188), (100, 75))]),
        ("fit:120x120,png", (500, 375), [((500, 375), (120, 90))]),  # 1/8 would leave 2.08x
        ("fit:240x240,png", (500, 375), [((500, 375), (240, 180))]),  # 1/4 leaves 2.08x
        ("fit:400x400,png", (1000, 750), [((1000, 750), (400, 300))]),  # 1/4 would leave 1.25x
        ("fit:800x800,png", (1000, 750), [((1000, 750), (800, 600))]),
        ("fit:801x801,png", (2000, 1500), [((2000, 1500), (801, 601))]),
        (
            "a=fit:100x100,png;b=fit:1200x1200,png;c=fit:750x750,png",
            (2000, 1500),
            # Biggest first; 750 from 1200 (1.6x); 100 from 750, the smallest base 1.5x its size.
            [((2000, 1500), (1200, 900)), ((1200, 900), (750, 562)), ((750, 562), (100, 75))],
        ),
    ],
)
def test_each_variant_starts_from_the_planned_decode_and_base(
    pipeline: str,
    decoded: tuple[int, int],
    steps: list[tuple[tuple[int, int], tuple[int, int]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes, calls = decoded_sizes(monkeypatch), resamplings(monkeypatch)
    render(detailed_jpeg(2000, 1500), Pipeline.parse(pipeline))
    assert sizes == [decoded]
    assert calls == steps


@pytest.mark.parametrize(
    ("size", "orientation"), [((2001, 1333), None), ((1333, 2001), 6), ((3000, 2000), 8)]
)
def test_shrunk_and_shared_decodes_give_the_predicted_sizes(
    size: tuple[int, int], orientation: int | None
) -> None:
    pipeline = Pipeline.parse(
        "a=fit:1024x1024,png;b=fit:256x256,png;c=fill:300x200:smart,png;"
        "d=pad:300x300,png;e=resize:x100,png;f=fit:90x90,rotate:90,png"
    )
    results = render(detailed_jpeg(*size, orientation=orientation), pipeline)
    upright = size[::-1] if orientation in (6, 8) else size
    for variant, result in zip(pipeline.variants, results, strict=True):
        assert (result.width, result.height) == variant.target_size(*upright), variant.name


@pytest.mark.parametrize("target", [256, 1024, 1600, 2000])
def test_fast_paths_stay_within_1_db_of_a_full_decode(target: int) -> None:
    data = detailed_jpeg(4000, 3000)
    (ours,) = render(data, Pipeline.parse(f"fit:{target}x{target},jpeg:q85"))
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        reference = full.resize((ours.width, ours.height), Image.Resampling.LANCZOS)
    naive = io.BytesIO()
    reference.save(naive, "JPEG", quality=85, optimize=True)
    with Image.open(io.BytesIO(ours.data)) as mine, Image.open(naive) as theirs:
        assert psnr(mine, reference) >= psnr(theirs, reference) - 1.0


@pytest.mark.parametrize("grain", [False, True])
@pytest.mark.parametrize(
    "pipeline",
    [
        "a=fit:1600x1600,png",  # decoded at 1/2, then 1.25x
        "a=fit:1200x1200,png",  # 1/2, then 1.67x
        "a=fit:1600x1600,png;b=fit:1024x1024,png;c=fit:256x256,png",  # b from a, c from b
        "a=fit:256x256,png",  # 1/4, then 3.9x
        "a=fit:500x500,png",  # 1/4, then 2x
        "a=fit:200x200,png",  # 1/8, then 2.5x
    ],
)
def test_shrunk_decodes_and_shared_bases_stay_within_1_db_of_a_full_decode(
    pipeline: str, grain: bool
) -> None:
    # Lossless outputs, measured against the ideal: the picture the JPEG was made from, scaled
    # with LANCZOS. A full decode and one LANCZOS pass from it is what we must stay within 1 dB of.
    picture = detailed_picture(4000, 3000, grain=grain)
    data = detailed_jpeg(4000, 3000, grain=grain)
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        for result in render(data, Pipeline.parse(pipeline)):
            size = (result.width, result.height)
            ideal = picture.resize(size, Image.Resampling.LANCZOS)
            naive = full.resize(size, Image.Resampling.LANCZOS)
            with Image.open(io.BytesIO(result.data)) as ours:
                assert psnr(ours, ideal) >= psnr(naive, ideal) - 1.0, (result.name, size)


def test_a_smaller_variant_from_a_bigger_one_stays_within_1_db() -> None:
    data = detailed_jpeg(3000, 2000)
    together = render(data, Pipeline.parse("big=fit:1600x1600,png;small=fit:400x400,png"))
    (alone,) = render(data, Pipeline.parse("small=fit:400x400,png"))
    with (
        Image.open(io.BytesIO(together[1].data)) as shared,
        Image.open(io.BytesIO(alone.data)) as own,
    ):
        assert shared.size == own.size
        assert psnr(shared, own) > 40


def animated_gif(frames: int = 4, size: tuple[int, int] = (120, 80)) -> bytes:
    images = [Image.new("RGB", size, (i * 60 % 256, 100, 200 - i * 40)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        "GIF",
        save_all=True,
        append_images=images[1:],
        duration=[100 + 20 * i for i in range(frames)],
        loop=0,
    )
    return buffer.getvalue()


def test_an_animation_stays_animated_where_the_format_can_hold_it() -> None:
    pipeline = Pipeline.parse(
        "moving=fit:60x60,webp;still=fit:60x60,first-frame,webp;jpg=fit:60x60,jpeg"
    )
    moving, still, jpg = render(animated_gif(), pipeline)
    with Image.open(io.BytesIO(moving.data)) as out:
        assert getattr(out, "n_frames", 1) == 4
        durations = []
        for index in range(out.n_frames):
            out.seek(index)
            out.load()  # WebP reports a frame's duration once the frame is read
            durations.append(out.info["duration"])
        assert durations == [100, 120, 140, 160]
        assert (moving.width, moving.height) == out.size == (60, 40)
    for single in (still, jpg):
        with Image.open(io.BytesIO(single.data)) as out:
            assert getattr(out, "n_frames", 1) == 1


def test_placeholder_and_metadata_options() -> None:
    data = sample_image(400, 300, orientation=1)
    plain, rich = render(
        data, Pipeline.parse("a=fit:100x100,jpeg;b=fit:100x100,placeholder,keep-metadata,jpeg")
    )
    assert (plain.blurhash, plain.dominant_color) == (None, None)
    assert rich.blurhash is not None
    assert rich.dominant_color is not None
    assert rich.dominant_color.startswith("#")
    with Image.open(io.BytesIO(plain.data)) as out:
        assert not out.getexif()
    with Image.open(io.BytesIO(rich.data)) as out:
        assert out.getexif().get(0x0112) == 1


@pytest.mark.parametrize(
    ("fmt", "expected"), [("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif"), ("BMP", "png")]
)
def test_original_keeps_the_input_format_where_it_can(fmt: str, expected: str) -> None:
    (result,) = render(sample_image(64, 48, fmt), Pipeline.parse("original"))
    assert result.format == expected


def test_avif_out() -> None:
    (result,) = render(sample_image(200, 100), Pipeline.parse("fit:100x100,avif:q50"))
    with Image.open(io.BytesIO(result.data)) as out:
        assert (out.format, out.size) == ("AVIF", (100, 50))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_render_decodes_the_pixels_once(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A PNG's getexif() decodes the whole image to reach chunks after the pixels: asking it for
    # the orientation before decoding used to decode every PNG twice.
    from PIL import ImageFile

    decodes = 0
    real = ImageFile.ImageFile.load_prepare

    def counting(self: ImageFile.ImageFile) -> None:
        nonlocal decodes
        decodes += 1
        real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", counting)
    render(sample_image(300, 200, fmt), Pipeline.parse("a=fit:100x100,png;b=fit:50x50,jpeg"))
    assert decodes == 1
