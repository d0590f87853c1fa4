"""Location data leaves an original; its pixels and the rest of its metadata stay."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import time
import zlib

import pytest
from PIL import Image, PngImagePlugin

from imageproc import InvalidImage, Processor
from imageproc.engine._location import strip_location
from imageproc.testing import memory_processor

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude='
    b'"51,30.0N" exif:GPSLongitude="0,7.5W" exif:DateTimeOriginal="2024-01-01">'
    b"<exif:GPSAltitude>12/1</exif:GPSAltitude></rdf:Description></rdf:RDF></x:xmpmeta>"
)


def exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2024:01:01 10:00:00"
    exif.get_ifd(0x8825)[1] = "N"
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)
    return exif


def picture() -> Image.Image:
    return Image.linear_gradient("L").resize((96, 64)).convert("RGB")


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    exif = exif_with_gps().tobytes()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode(), zip=True)
        picture().save(buffer, "PNG", exif=exif, pnginfo=info)
    else:
        picture().save(buffer, fmt, exif=exif, xmp=XMP, quality=90)
    return buffer.getvalue()


def assert_located(data: bytes, located: bool) -> None:
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        assert (0x8825 in exif) is located
        assert exif[0x010F] == "Camera maker"
        assert exif[0x0112] == 6
        assert exif.get_ifd(0x8769)[0x9003] == "2024:01:01 10:00:00"
        xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
        assert xmp is not None
        xmp = xmp.encode() if isinstance(xmp, str) else xmp
        assert (b"GPS" in xmp) is located
        assert b'exif:DateTimeOriginal="2024-01-01"' in xmp


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_location_is_taken_out_and_nothing_else(fmt: str) -> None:
    data = encoded(fmt)
    assert_located(data, True)
    stripped = strip_location(data, fmt)
    assert_located(stripped, False)
    assert pixels(stripped) == pixels(data)
    if fmt == "JPEG":  # the compressed pixels are copied, not encoded again
        assert stripped[stripped.index(b"\xff\xda") :] == data[data.index(b"\xff\xda") :]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_an_image_without_location_is_left_as_it_is(fmt: str) -> None:
    buffer = io.BytesIO()
    picture().save(buffer, fmt)
    data = buffer.getvalue()
    assert strip_location(data, fmt) is data


def test_the_processor_stores_originals_without_location_when_asked() -> None:
    data = encoded("JPEG")
    keeping: Processor = memory_processor()
    task = keeping.submit(data)
    assert keeping.read(task.source_key) == data
    stripping = memory_processor(strip_location=True)
    task = stripping.submit(data)
    stored = stripping.read(task.source_key)
    assert_located(stored, False)
    assert task.source is not None
    assert task.source.bytes == len(stored)
    assert task.source.sha256 == hashlib.sha256(stored).hexdigest()


def jpeg_with_xmp(xmp: bytes) -> bytes:
    buffer = io.BytesIO()
    picture().save(buffer, "JPEG", xmp=xmp)
    return buffer.getvalue()


def xmp_of(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        xmp = image.info.get("xmp", b"")
    return xmp.encode() if isinstance(xmp, str) else bytes(xmp)


@pytest.mark.parametrize(
    "written",
    [
        b"exif:GPSLatitude='51,30.0N'",
        b'exif:GPSLatitude = "51,30.0N"',
        b'e:GPSLatitude="51,30.0N" xmlns:e="http://ns.adobe.com/exif/1.0/"',
    ],
    ids=["single-quotes", "spaces", "another-prefix"],
)
def test_every_way_of_writing_a_gps_property_is_taken_out(written: bytes) -> None:
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description ' + written + b"/></x:xmpmeta>"
    stripped = xmp_of(strip_location(jpeg_with_xmp(xmp), "JPEG"))
    assert b"GPS" not in stripped
    assert stripped.startswith(b"<x:xmpmeta")


@pytest.mark.parametrize(
    "xmp",
    [
        b"<x:xmpmeta " + b" " * 60_000 + b"exif:GPSLatitude='1' " + b" " * 4_000 + b"/>",
        b"<x:xmpmeta>" + b"<exif:GPSA>" * 5_000 + b"</x:xmpmeta>",
    ],
    ids=["long-whitespace", "unclosed-tags"],
)
def test_hostile_xmp_costs_linear_time(xmp: bytes) -> None:
    data = jpeg_with_xmp(xmp)
    started = time.perf_counter()
    with contextlib.suppress(InvalidImage):  # what it cannot take out is refused, not stored
        stripped = strip_location(data, "JPEG")
        assert b"GPS" not in xmp_of(stripped)
    assert time.perf_counter() - started < 0.5


def test_unclosed_gps_elements_are_refused_not_stored() -> None:
    data = jpeg_with_xmp(b"<x:xmpmeta><exif:GPSLatitude>51,30.0N</x:xmpmeta>")
    with pytest.raises(InvalidImage, match="location"):
        strip_location(data, "JPEG")


def test_a_compressed_xmp_that_inflates_to_gigabytes_is_refused_cheaply() -> None:
    base = io.BytesIO()
    picture().save(base, "PNG")
    data = base.getvalue()
    inflating = zlib.compress(b"exif:GPS" + b" " * 200_000_000, 9)
    chunk_body = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + inflating
    chunk = (
        struct.pack(">I", len(chunk_body))
        + b"iTXt"
        + chunk_body
        + struct.pack(">I", zlib.crc32(b"iTXt" + chunk_body))
    )
    bomb = data[:-12] + chunk + data[-12:]  # after the pixels, before IEND
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="4 MiB"):
        strip_location(bomb, "PNG")
    assert time.perf_counter() - started < 1


def test_an_mpo_keeps_its_first_picture_only() -> None:
    exif = exif_with_gps().tobytes()
    buffer = io.BytesIO()
    picture().save(buffer, "MPO", save_all=True, append_images=[picture()], exif=exif)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "MPO"
        assert getattr(image, "n_frames", 1) == 2
    stripped = strip_location(data, "JPEG")
    with Image.open(io.BytesIO(stripped)) as image:
        assert image.format == "JPEG"  # no MPF index left: one picture
        assert 0x8825 not in image.getexif()
        image.load()
    assert stripped.count(b"\xff\xd8") == 1


def test_fill_bytes_before_a_segment_do_not_hide_its_location() -> None:
    data = encoded("JPEG")
    padded = data[:2] + b"\xff" * 8 + data[2:]  # legal: any number of fill bytes before a marker
    assert_located(padded, True)
    assert_located(strip_location(padded, "JPEG"), False)
