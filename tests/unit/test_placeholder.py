"""Tests of ``engine._placeholder``: BlurHash and dominant colour."""

from __future__ import annotations

import subprocess
import sys
import time

import blurhash  # type: ignore[import-untyped]
import pytest
from PIL import Image, ImageDraw

from imageproc.engine._placeholder import placeholder


def picture(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Mostly teal, with a red band down the left and a yellow disc: teal dominates."""
    image = Image.new("RGB", size, (0, 128, 128))
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle((0, 0, width // 5, height), fill=(220, 20, 20))
    draw.ellipse(
        (width // 2, height // 4, width // 2 + height // 3, height // 4 + height // 3),
        fill=(250, 220, 0),
    )
    return image


def test_a_valid_blurhash_and_the_dominant_colour() -> None:
    hash_, colour = placeholder(picture())
    assert colour == "#008080"
    assert blurhash.components(hash_) == (4, 3)
    assert len(hash_) == 4 + 2 * 4 * 3
    decoded = blurhash.decode(hash_, 8, 6)
    # The blur keeps the picture's layout: red on the left, teal on the right.
    left, right = decoded[3][0], decoded[3][7]
    assert left[0] > left[1] + 60
    assert min(right[1], right[2]) > right[0] + 20


def test_deterministic() -> None:
    assert placeholder(picture()) == placeholder(picture())


def test_transparent_parts_do_not_count_towards_the_colour() -> None:
    image = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    image.paste((30, 60, 200, 255), (0, 0, 100, 200))  # a third opaque blue, the rest clear
    hash_, colour = placeholder(image)
    assert colour == "#1e3cc8"
    # The BlurHash sees the clear part on white.
    decoded = blurhash.decode(hash_, 6, 4)
    assert min(decoded[2][5]) > 200


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("L", 90, "#5a5a5a"), ("LA", (90, 255), "#5a5a5a"), ("RGBA", (1, 2, 3, 255), "#010203")],
)
def test_other_modes(mode: str, value: object, expected: str) -> None:
    hash_, colour = placeholder(Image.new(mode, (50, 40), value))  # type: ignore[arg-type]
    assert colour == expected
    assert blurhash.components(hash_) == (4, 3)


def test_palette_images_and_tiny_images() -> None:
    paletted = picture((200, 100)).quantize(16)
    assert placeholder(paletted)[1] == "#008080"
    hash_, colour = placeholder(Image.new("RGB", (1, 1), (255, 0, 0)))
    assert (blurhash.components(hash_), colour) == ((4, 3), "#ff0000")


def test_fast_on_a_large_image() -> None:
    image = picture((4000, 3000))
    started = time.perf_counter()
    placeholder(image)
    assert time.perf_counter() - started < 0.5


def test_blurhash_is_imported_only_when_used() -> None:
    code = "import sys, imageproc.engine._placeholder; print('blurhash' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
