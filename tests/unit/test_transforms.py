"""Tests of ``engine._transforms``: each pipeline operation on decoded images."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops, ImageDraw

from imageproc.engine._transforms import apply, fill_box
from imageproc.errors import InvalidPipeline
from imageproc.pipeline._colour import Colour
from imageproc.pipeline._operations import (
    Blur,
    Crop,
    Fill,
    Fit,
    Flip,
    Grayscale,
    Pad,
    Resize,
    Rotate,
    Sharpen,
)


def quadrants(width: int = 80, height: int = 40) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    image.paste((0, 255, 0), (width // 2, 0, width, height // 2))
    image.paste((0, 0, 255), (0, height // 2, width // 2, height))
    return image


def colour_at(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    return value if isinstance(value, tuple) else (value,)  # type: ignore[return-value]


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("operation", "upscale", "size"),
    [
        (Fit(40, 40), False, (40, 20)),
        (Fit(400, 400), False, (80, 40)),
        (Fit(400, 400), True, (400, 200)),
        (Resize(10, 30), False, (10, 30)),
        (Resize(None, 10), False, (20, 10)),
        (Fill(20, 20), False, (20, 20)),
        (Fill(100, 100), False, (40, 40)),
        (Fill(100, 100), True, (100, 100)),
        (Pad(100, 100), False, (100, 100)),
        (Crop(10, 5, 30, 20), False, (30, 20)),
        (Crop(70, 30, 30, 20), False, (10, 10)),
        (Rotate(90), False, (40, 80)),
        (Rotate(180), False, (80, 40)),
        (Rotate(45), False, Rotate(45).target_size(80, 40, upscale=False)),
        (Flip("h"), False, (80, 40)),
        (Grayscale(), False, (80, 40)),
        (Blur(2), False, (80, 40)),
        (Sharpen(), False, (80, 40)),
    ],
)
def test_geometry_matches_the_pipelines_prediction(
    operation: object, upscale: bool, size: tuple[int, int]
) -> None:
    result = apply(quadrants(), operation, upscale=upscale)  # type: ignore[arg-type]
    assert result.size == size
    assert result.size == operation.target_size(80, 40, upscale=upscale)  # type: ignore[attr-defined]


def test_rotate_is_clockwise_and_quarter_turns_are_exact() -> None:
    turned = apply(quadrants(), Rotate(90))
    # Clockwise: the top-left red ends up top-right.
    assert colour_at(turned, 30, 5) == (255, 0, 0)
    assert colour_at(turned, 5, 5) == (0, 0, 255)
    back = apply(apply(apply(turned, Rotate(90)), Rotate(90)), Rotate(90))
    assert ImageChops.difference(back, quadrants()).getbbox() is None


def test_rotate_by_other_angles_fills_the_corners() -> None:
    turned = apply(quadrants(), Rotate(30, Colour(0, 0, 0)))
    assert colour_at(turned, 0, 0) == (0, 0, 0)
    transparent = apply(quadrants(), Rotate(30, Colour(0, 0, 0, 0)))
    assert transparent.mode == "RGBA"
    assert colour_at(transparent, 0, 0)[3] == 0


def test_flip() -> None:
    assert colour_at(apply(quadrants(), Flip("h")), 5, 5) == (0, 255, 0)
    assert colour_at(apply(quadrants(), Flip("v")), 5, 5) == (0, 0, 255)


def test_a_crop_outside_the_image_is_an_error_not_the_whole_image() -> None:
    image = quadrants()
    with pytest.raises(InvalidPipeline) as error:
        apply(image, Crop(500, 0, 10, 10))
    assert error.value.message == (
        f"crop:500,0,10,10 starts outside the {image.width}x{image.height} image it is applied to"
    )
    assert not error.value.transient  # the task fails; trying again cannot help


def test_pad_letterboxes_with_the_colour() -> None:
    padded = apply(quadrants(), Pad(80, 80, Colour(0, 0, 0)))
    assert colour_at(padded, 40, 5) == (0, 0, 0)  # the bar above
    assert close(colour_at(padded, 5, 25), (255, 0, 0))  # the picture, centred vertically
    see_through = apply(quadrants(), Pad(80, 80, Colour(0, 0, 0, 0)))
    assert see_through.mode == "RGBA"
    assert colour_at(see_through, 40, 5)[3] == 0


@pytest.mark.parametrize(
    ("gravity", "expected"),
    [
        ("w", (255, 0, 0)),  # the left half: red on top
        ("e", (0, 255, 0)),  # the right half: green on top
        ("center", None),
    ],
)
def test_fill_gravity_picks_the_side(gravity: str, expected: tuple[int, int, int] | None) -> None:
    result = apply(quadrants(), Fill(40, 40, gravity))  # type: ignore[arg-type]
    assert result.size == (40, 40)
    if expected is not None:
        assert close(colour_at(result, 10, 10), expected)


def test_fill_smart_finds_the_detail() -> None:
    image = Image.new("RGB", (300, 100), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for x in range(230, 290, 6):  # stripes near the right edge: the only detail
        draw.line((x, 0, x, 100), fill=(0, 0, 0), width=2)
    left, _, right, _ = fill_box(image, Fill(100, 100, "smart"), upscale=False)
    assert left >= 180
    assert right <= 300
    assert fill_box(image, Fill(100, 100), upscale=False)[0] == 100  # centre, for comparison


def test_grayscale_keeps_alpha() -> None:
    rgba = quadrants().convert("RGBA")
    assert apply(rgba, Grayscale()).mode == "LA"
    assert apply(quadrants(), Grayscale()).mode == "L"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_every_operation_works_in_every_decoded_mode(mode: str) -> None:
    image = quadrants().convert(mode)
    for operation in (
        Fit(30, 30),
        Fill(30, 30, "smart"),
        Pad(90, 90, Colour(1, 2, 3, 4)),
        Resize(10, 10),
        Crop(1, 1, 5, 5),
        Rotate(33),
        Rotate(270),
        Flip("v"),
        Grayscale(),
        Blur(1.5),
        Sharpen(3),
    ):
        result = apply(image, operation)
        assert result.mode in ("RGB", "RGBA", "L", "LA")
        assert result.size == operation.target_size(80, 40, upscale=False)
