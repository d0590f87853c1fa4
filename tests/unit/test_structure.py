"""The structure walks refuse files that would cost a decoder far more than their pixels."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from imageproc import ImageTooLarge, InvalidImage
from imageproc.engine import _structure as structure
from imageproc.engine._imaging import probe, render
from imageproc.engine._open import ImageLimits
from imageproc.pipeline._pipeline import Pipeline
from imageproc.testing import sample_image
from tests.support.images import progressive_jpeg

LIMITS = ImageLimits()


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
@pytest.mark.parametrize("optimize", [False, True])
def test_real_progressive_jpegs_are_far_under_the_scan_limit(mode: str, optimize: bool) -> None:
    picture = Image.open(io.BytesIO(sample_image(400, 300))).convert(mode)
    data = save(picture, "JPEG", progressive=True, optimize=optimize)
    layout = structure.jpeg_layout(data, stop_after=10_000)
    assert 1 < layout.scans <= 18  # libjpeg: 6 for greyscale, 10 for colour, 18 for CMYK
    assert layout.segments < 40
    probe(data)  # accepted


def test_baseline_jpeg_has_one_scan() -> None:
    layout = structure.jpeg_layout(sample_image(300, 200), stop_after=10_000)
    assert layout.scans == 1


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding() -> None:
    data = progressive_jpeg((2000, 2000), extra_scans=2000)
    assert len(data) < 64 * 1024  # small: the header alone says 4 MP, under every limit
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="more than 100 scans"):
        probe(data)
    with pytest.raises(ImageTooLarge, match="scans"):
        render(data, Pipeline.parse("t=fit:100x100"))
    # Decoding it takes seconds; the refusal a small fraction of one.
    assert time.perf_counter() - started < 0.5


def test_the_scan_limit_is_a_setting() -> None:
    data = progressive_jpeg((64, 64), extra_scans=20)
    probe(data)
    with pytest.raises(ImageTooLarge, match="more than 10 scans"):
        probe(data, ImageLimits(max_scans=10))


def test_a_jpeg_of_many_tiny_segments_is_refused() -> None:
    data = sample_image(64, 64)
    comments = b"\xff\xfe\x00\x02" * 200_000  # empty comment segments, each read in Python
    bomb = data[:2] + comments + data[2:]
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="marker segments"):
        probe(bomb)
    assert time.perf_counter() - started < 0.5


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_png_of_many_tiny_chunks_is_refused() -> None:
    data = save(Image.new("RGB", (8, 8)), "PNG")
    filler = png_chunk(b"prVt", b"") * 150_000
    bomb = data[:33] + filler + data[33:]  # after the signature and IHDR
    with pytest.raises(ImageTooLarge, match="PNG of more than 100000 chunks"):
        probe(bomb)
    probe(data[:33] + png_chunk(b"prVt", b"") * 100 + data[33:])


def test_a_gif_of_many_tiny_sub_blocks_is_refused() -> None:
    data = save(Image.new("P", (8, 8)), "GIF")
    comment = b"\x21\xfe" + b"\x01x" * 300_000 + b"\x00"  # a comment in one-byte sub-blocks
    trailer = data.rindex(b";")
    with pytest.raises(ImageTooLarge, match="GIF of more than"):
        probe(data[:trailer] + comment + b";")


@given(st.binary(max_size=2048))
def test_the_walks_take_any_bytes(data: bytes) -> None:
    for prefix in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a"):
        blob = prefix + data
        try:
            structure.check_jpeg(blob, max_scans=5, max_chunks=50)
            structure.check_png(blob, max_chunks=50)
            structure.gif_layout(blob, max_chunks=50)
        except ImageTooLarge:
            pass


@pytest.mark.parametrize(
    "filler",
    [b"\xff" * 20_000_000, b"\xff\xd0" * 5_000_000, b"\xff\x01" * 5_000_000],
    ids=["fill-bytes", "restart-markers", "tem-markers"],
)
def test_the_jpeg_walk_is_not_slowed_by_markers_without_segments(filler: bytes) -> None:
    data = sample_image(64, 64)
    bomb = data[:2] + filler + data[2:]
    started = time.perf_counter()
    try:
        probe(bomb)
    except ImageTooLarge:
        pass
    except InvalidImage:
        pass  # Pillow may refuse it too; what matters is how long the walk took
    assert time.perf_counter() - started < 1.5


def test_bytes_that_are_no_marker_do_not_hide_scans_behind_them() -> None:
    data = progressive_jpeg((64, 64), extra_scans=20)
    # A stray byte before every scan: libjpeg skips it ("extraneous bytes") and decodes on.
    hidden = data.replace(b"\xff\xda", b"\x00\xff\xda")
    assert structure.jpeg_layout(hidden, stop_after=1000).scans == (
        structure.jpeg_layout(data, stop_after=1000).scans
    )
