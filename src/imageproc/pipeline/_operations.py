"""The operations a variant applies, one class each (``fit``, ``fill``, ``pad``, ``resize``,
``crop``, ``rotate``, ``flip``, ``grayscale``, ``blur``, ``sharpen``), and :data:`OPERATIONS`, every
class by its name. Each reads its own arguments of the text form, writes them back, names the
sizes it asks for and predicts the size it makes. Model: it imports nothing of ours but the errors
and the pipeline's colours.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, Self, get_args

import attrs

from imageproc.errors import InvalidPipeline
from imageproc.pipeline._colour import WHITE, Colour, as_colour

__all__ = [
    "GRAVITIES",
    "OPERATIONS",
    "Blur",
    "Crop",
    "Fill",
    "Fit",
    "Flip",
    "Gravity",
    "Grayscale",
    "Operation",
    "Pad",
    "Resize",
    "Rotate",
    "Sharpen",
]

# Digits are [0-9], never \d: in a str pattern \d is any Unicode digit (fullwidth,
# Arabic-Indic…), which int() and float() read as well, so one pipeline could be written in
# many scripts.
_SIZE = re.compile(r"([0-9]{1,6})?x([0-9]{1,6})?")
_INT = re.compile(r"-?[0-9]{1,6}")
_NUMBER = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,4})?")

Gravity = Literal["center", "n", "s", "e", "w", "ne", "nw", "se", "sw", "smart"]
GRAVITIES: Final = frozenset(get_args(Gravity))


# The text form writes whole numbers with at most six digits; the model holds no value the text
# form could not write, so every pipeline, however it was built, prints text that parses back.
_MAX_WHOLE: Final = 999_999


def _whole(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidPipeline(f"{what} must be a whole number, got {value!r}")
    if abs(value) > _MAX_WHOLE:
        raise InvalidPipeline(f"{what} must be at most {_MAX_WHOLE}, got {value}")
    return value


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if _whole(attribute.name, value) < 1:
        raise InvalidPipeline(f"{attribute.name} must be at least 1, got {value}")


def _real(value: object) -> float:
    """A number the text form can write: finite, at most 4 decimals (``1.5``, ``0.25``)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidPipeline(f"expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or round(number, 4) != number:
        raise InvalidPipeline(f"expected a number with at most 4 decimals, got {value!r}")
    return number


def _number(value: float) -> str:
    """A float in its shortest exact text (``2``, not ``2.0``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _scale_to(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


class _Op:
    """What every operation provides; see the concrete classes."""

    op: ClassVar[str]
    #: Whether the operation needs arguments in the text form.
    needs_args: ClassVar[bool] = True

    def args(self) -> list[str]:
        """The arguments of the text form, in order."""
        raise NotImplementedError

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        """Build from the text form's arguments; :class:`InvalidPipeline` if they are wrong."""
        raise NotImplementedError

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        """The size this operation turns a ``width`` x ``height`` image into."""
        return width, height

    def sides(self) -> tuple[int, ...]:
        """The pixel sizes this operation names, checked against the largest side allowed."""
        return ()

    def __str__(self) -> str:
        args = self.args()
        return ":".join([self.op, *args])

    def to_json(self) -> dict[str, Any]:
        """This operation as a JSON object: ``{"op": name, ...fields}``."""
        fields = attrs.asdict(self, recurse=False)  # type: ignore[arg-type]
        return {
            "op": self.op,
            **{k: str(v) if isinstance(v, Colour) else v for k, v in fields.items()},
        }


def _parse_size(
    op: str, args: list[str], *, partial: bool = False
) -> tuple[int | None, int | None]:
    match = _SIZE.fullmatch(args[0]) if args else None
    if match is None or (not partial and None in match.groups()) or match.groups() == (None, None):
        wanted = "WxH, Wx or xH" if partial else "WxH"
        raise InvalidPipeline(f"{op} takes a size {wanted}, got {':'.join(args)!r}")
    width, height = match.groups()
    return (int(width) if width else None), (int(height) if height else None)


def _box_and_option(op: str, args: list[str]) -> list[Any]:
    """``WxH`` and at most one more argument (a gravity, a colour), as constructor arguments."""
    _no_more(op, args, 2)
    return [*_parse_size(op, args), *args[1:]]


def _no_more(op: str, args: list[str], allowed: int) -> None:
    if len(args) > allowed:
        most = "no arguments" if not allowed else f"at most {allowed} argument(s)"
        raise InvalidPipeline(f"{op} takes {most}, got {':'.join(args)!r}")


@attrs.frozen
class Fit(_Op):
    """``fit:WxH``: scale to fit inside the box, keeping the aspect ratio."""

    width: int = attrs.field(validator=_at_least_one)
    height: int = attrs.field(validator=_at_least_one)
    op: ClassVar[str] = "fit"

    def args(self) -> list[str]:
        return [f"{self.width}x{self.height}"]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        _no_more(cls.op, args, 1)
        width, height = _parse_size(cls.op, args)
        return cls(width, height)  # type: ignore[arg-type]

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        scale = min(self.width / width, self.height / height)
        if scale >= 1 and not upscale:
            return width, height
        return _scale_to(width, height, scale)

    def sides(self) -> tuple[int, ...]:
        return (self.width, self.height)


@attrs.frozen
class Fill(_Op):
    """``fill:WxH[:gravity]``: cover the box, keeping the aspect ratio, then crop to it.

    Without ``upscale`` a smaller image is not enlarged: the crop is then the largest box of the
    requested shape that fits.
    """

    width: int = attrs.field(validator=_at_least_one)
    height: int = attrs.field(validator=_at_least_one)
    gravity: Gravity = attrs.field(default="center")
    op: ClassVar[str] = "fill"

    @gravity.validator
    def _check_gravity(self, _: object, value: str) -> None:
        if value not in GRAVITIES:
            raise InvalidPipeline(f"gravity {value!r} is not one of {sorted(GRAVITIES)}")

    def args(self) -> list[str]:
        size = f"{self.width}x{self.height}"
        return [size] if self.gravity == "center" else [size, self.gravity]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        return cls(*_box_and_option(cls.op, args))

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        if upscale or (self.width <= width and self.height <= height):
            return self.width, self.height
        # Too small to cover the box: the largest box of its shape that fits, unscaled.
        scale = min(width / self.width, height / self.height, 1.0)
        return _scale_to(self.width, self.height, scale)

    def sides(self) -> tuple[int, ...]:
        return (self.width, self.height)


@attrs.frozen
class Pad(_Op):
    """``pad:WxH[:colour]``: fit inside the box, then letterbox to exactly WxH."""

    width: int = attrs.field(validator=_at_least_one)
    height: int = attrs.field(validator=_at_least_one)
    colour: Colour = attrs.field(default=WHITE, converter=as_colour)
    op: ClassVar[str] = "pad"

    def args(self) -> list[str]:
        size = f"{self.width}x{self.height}"
        return [size] if self.colour == WHITE else [size, str(self.colour)]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        return cls(*_box_and_option(cls.op, args))

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        return self.width, self.height

    def sides(self) -> tuple[int, ...]:
        return (self.width, self.height)


@attrs.frozen
class Resize(_Op):
    """``resize:WxH`` (exact size, ignoring aspect), ``resize:Wx`` or ``resize:xH`` (one side)."""

    width: int | None = attrs.field(default=None)
    height: int | None = attrs.field(default=None)
    op: ClassVar[str] = "resize"

    @width.validator
    @height.validator
    def _check(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None:
            _at_least_one(self, attribute, value)  # type: ignore[arg-type]

    def __attrs_post_init__(self) -> None:
        if self.width is None and self.height is None:
            raise InvalidPipeline("resize needs a width, a height or both")

    def args(self) -> list[str]:
        return [f"{self.width or ''}x{self.height or ''}"]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        _no_more(cls.op, args, 1)
        return cls(*_parse_size(cls.op, args, partial=True))

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        if self.width is not None and self.height is not None:
            if upscale:
                return self.width, self.height
            return min(self.width, width), min(self.height, height)
        scale = self.width / width if self.width is not None else self.height / height  # type: ignore[operator]
        if scale >= 1 and not upscale:
            return width, height
        return _scale_to(width, height, scale)

    def sides(self) -> tuple[int, ...]:
        return tuple(v for v in (self.width, self.height) if v is not None)


@attrs.frozen
class Crop(_Op):
    """``crop:x,y,w,h``: the rectangle at (x, y) of w x h pixels, clipped to the image."""

    x: int = attrs.field()
    y: int = attrs.field()
    width: int = attrs.field(validator=_at_least_one)
    height: int = attrs.field(validator=_at_least_one)
    op: ClassVar[str] = "crop"

    @x.validator
    @y.validator
    def _check_origin(self, attribute: attrs.Attribute[int], value: int) -> None:
        if _whole(f"crop {attribute.name}", value) < 0:
            raise InvalidPipeline(f"crop {attribute.name} must not be negative, got {value}")

    def args(self) -> list[str]:
        return [f"{self.x},{self.y},{self.width},{self.height}"]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        parts = args[0].split(",") if len(args) == 1 else []
        if len(parts) != 4 or not all(_INT.fullmatch(p) for p in parts):
            raise InvalidPipeline(f"crop takes x,y,w,h, got {':'.join(args)!r}")
        return cls(*(int(p) for p in parts))

    def box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The crop box clipped to a ``width`` x ``height`` image, or None if outside it."""
        right, bottom = min(width, self.x + self.width), min(height, self.y + self.height)
        if self.x >= width or self.y >= height:
            return None
        return (self.x, self.y, right, bottom)

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        box = self.box(width, height)
        return (width, height) if box is None else (box[2] - box[0], box[3] - box[1])

    def sides(self) -> tuple[int, ...]:
        return (self.width, self.height)


def _degrees(value: int) -> int:
    return _whole("rotate degrees", value) % 360


@attrs.frozen
class Rotate(_Op):
    """``rotate:DEG[:colour]``: clockwise by DEG degrees (normalised to 0-359)."""

    degrees: int = attrs.field(converter=_degrees)
    colour: Colour = attrs.field(default=WHITE, converter=as_colour)
    op: ClassVar[str] = "rotate"

    def args(self) -> list[str]:
        return (
            [str(self.degrees)] if self.colour == WHITE else [str(self.degrees), str(self.colour)]
        )

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        _no_more(cls.op, args, 2)
        if not args or not _INT.fullmatch(args[0]):
            raise InvalidPipeline(f"rotate takes whole degrees, got {':'.join(args)!r}")
        return cls(int(args[0]), *args[1:])

    @property
    def lossless(self) -> bool:
        """Whether this is a quarter turn (no resampling)."""
        return self.degrees % 90 == 0

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        if self.degrees in (90, 270):
            return height, width
        if self.lossless:
            return width, height
        # The bounding box of the turned corners, rounded outwards as Pillow's rotate(expand=True)
        # does, so the prediction matches the engine to the pixel.
        radians = math.radians(self.degrees)
        cos, sin = math.cos(radians), math.sin(radians)
        corners = [
            (x - width / 2, y - height / 2)
            for x, y in ((0, 0), (width, 0), (width, height), (0, height))
        ]
        xs = [x * cos - y * sin for x, y in corners]
        ys = [x * sin + y * cos for x, y in corners]
        return (
            math.ceil(max(xs)) - math.floor(min(xs)),
            math.ceil(max(ys)) - math.floor(min(ys)),
        )


@attrs.frozen
class Flip(_Op):
    """``flip:h`` (mirror left-right) or ``flip:v`` (upside down)."""

    direction: Literal["h", "v"] = attrs.field()
    op: ClassVar[str] = "flip"

    @direction.validator
    def _check(self, _: object, value: str) -> None:
        if value not in ("h", "v"):
            raise InvalidPipeline(f"flip takes h or v, got {value!r}")

    def args(self) -> list[str]:
        return [self.direction]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        _no_more(cls.op, args, 1)
        return cls(args[0])  # type: ignore[arg-type]


@attrs.frozen
class Grayscale(_Op):
    """``grayscale``: drop colour."""

    op: ClassVar[str] = "grayscale"
    needs_args: ClassVar[bool] = False

    def args(self) -> list[str]:
        return []

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        _no_more(cls.op, args, 0)
        return cls()


def _bounded(low: float, high: float) -> Any:
    def check(_: object, attribute: attrs.Attribute[float], value: float) -> None:
        if not low < value <= high:
            raise InvalidPipeline(f"{attribute.name} must be over {low} and at most {high}")

    return check


def _parse_number(op: str, text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise InvalidPipeline(f"{op} takes a number such as 2 or 1.5, got {text!r}")
    return float(text)


@attrs.frozen
class Blur(_Op):
    """``blur:SIGMA``: Gaussian blur of radius SIGMA pixels."""

    sigma: float = attrs.field(converter=_real, validator=_bounded(0, 100))
    op: ClassVar[str] = "blur"

    def args(self) -> list[str]:
        return [_number(self.sigma)]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        _no_more(cls.op, args, 1)
        return cls(_parse_number(cls.op, args[0]))


@attrs.frozen
class Sharpen(_Op):
    """``sharpen[:AMOUNT]``: unsharp mask; AMOUNT 1 is a moderate sharpening."""

    amount: float = attrs.field(default=1.0, converter=_real, validator=_bounded(0, 10))
    op: ClassVar[str] = "sharpen"
    needs_args: ClassVar[bool] = False

    def args(self) -> list[str]:
        return [] if self.amount == 1.0 else [_number(self.amount)]

    @classmethod
    def parse_args(cls, args: list[str]) -> Self:
        _no_more(cls.op, args, 1)
        return cls(_parse_number(cls.op, args[0])) if args else cls()


Operation = Fit | Fill | Pad | Resize | Crop | Rotate | Flip | Grayscale | Blur | Sharpen
#: Every operation class by its name in pipelines.
OPERATIONS: Final[Mapping[str, type[Operation]]] = {
    cls.op: cls for cls in (Fit, Fill, Pad, Resize, Crop, Rotate, Flip, Grayscale, Blur, Sharpen)
}
