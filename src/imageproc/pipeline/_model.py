"""What to make from one upload: a :class:`Pipeline` of named :class:`Variant`\\ s.

Each variant is a chain of operations, some options, and one output :class:`Encoding`. A pipeline
has a compact text form (used by the CLI and the HTTP API) and a JSON form; both round-trip
exactly, and two pipelines are equal when they mean the same work::

    thumb=fill:256x256:smart,webp:q80;large=fit:1600x1600,jpeg:q85:progressive

Variants are separated by ``;``; each is ``name=`` (optional for a lone variant, which is then
called ``default``) followed by tokens separated by ``,``; a token is ``op`` or ``op:arg:arg``.

Operations (``W``, ``H`` in pixels; no operation enlarges the image unless the variant says
``upscale``):

==========================  ====================================================================
``fit:WxH``                 scale to fit inside the box, keeping the aspect ratio
``fill:WxH[:gravity]``      cover the box, then crop; gravity ``center`` (default), ``n``, ``s``,
                            ``e``, ``w``, ``ne``, ``nw``, ``se``, ``sw``, or ``smart`` (the most
                            detailed region)
``pad:WxH[:colour]``        fit, then letterbox to exactly WxH (colour ``RRGGBB[AA]``, white)
``resize:WxH``              exactly WxH, ignoring the aspect ratio
``resize:Wx`` / ``xH``      one side, keeping the aspect ratio
``crop:x,y,w,h``            the rectangle at (x, y) of w x h, clipped to the image
``rotate:DEG[:colour]``     clockwise; 90/180/270 are lossless, other angles expand the canvas
                            and fill the corners with the colour (white)
``flip:h`` / ``flip:v``     mirror horizontally or vertically
``grayscale``               drop colour
``blur:SIGMA``              Gaussian blur (0 < SIGMA <= 100)
``sharpen[:AMOUNT]``        unsharp mask (0 < AMOUNT <= 10, default 1)
==========================  ====================================================================

Encodings: ``jpeg[:qN][:progressive]``, ``png``, ``webp[:qN][:lossless]``, ``avif[:qN]``,
``gif``, ``tiff``, and ``original`` (the input's format). Without one, a variant is JPEG. Default
qualities: JPEG 85, WebP 79, AVIF 63 (imgproxy's choices for the last two).

Variant options: ``upscale``; ``keep-metadata`` (metadata is stripped by default, for privacy;
colours stay right either way); ``first-frame`` (one still image from an animation);
``placeholder`` (a BlurHash and the dominant colour on the output); ``background:RRGGBB``
(what transparency is flattened onto where the format has none; white by default).

This module only describes work; :mod:`imageproc.engine._imaging` carries it out.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final, Literal, Self, get_args

import attrs

from imageproc._errors import InvalidPipeline
from imageproc._formats import OUTPUT_FORMATS

__all__ = [
    "DEFAULT_PIPELINE",
    "MAX_JSON_DEPTH",
    "OPERATIONS",
    "Blur",
    "Colour",
    "Crop",
    "Encoding",
    "Fill",
    "Fit",
    "Flip",
    "Grayscale",
    "Operation",
    "Pad",
    "Pipeline",
    "PipelineLimits",
    "Resize",
    "Rotate",
    "Sharpen",
    "Variant",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Digits are [0-9], never \d: in a str pattern \d is any Unicode digit (fullwidth,
# Arabic-Indic…), which int() and float() read as well, so one pipeline could be written in
# many scripts.
_SIZE = re.compile(r"([0-9]{1,6})?x([0-9]{1,6})?")
_QUALITY = re.compile(r"q([0-9]{1,3})")
_COLOUR = re.compile(r"[0-9a-fA-F]{6}(?:[0-9a-fA-F]{2})?")
_INT = re.compile(r"-?[0-9]{1,6}")
_NUMBER = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,4})?")

Gravity = Literal["center", "n", "s", "e", "w", "ne", "nw", "se", "sw", "smart"]
GRAVITIES: Final = frozenset(get_args(Gravity))

#: Quality used when a lossy encoding names none (imgproxy's choices for WebP and AVIF).
DEFAULT_QUALITY: Final[Mapping[str, int]] = {"jpeg": 85, "webp": 79, "avif": 63}
#: What ``original`` becomes for input formats we do not write (BMP).
ORIGINAL_FALLBACK: Final = "png"


def _fail(message: str, position: int) -> InvalidPipeline:
    return InvalidPipeline(f"{message} (at character {position + 1})")


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


@attrs.frozen
class Colour:
    """An sRGB colour with alpha, written ``RRGGBB`` or ``RRGGBBAA`` in pipelines."""

    red: int = attrs.field()
    green: int = attrs.field()
    blue: int = attrs.field()
    alpha: int = attrs.field(default=255)

    @red.validator
    @green.validator
    @blue.validator
    @alpha.validator
    def _check_channel(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise InvalidPipeline(f"colour {attribute.name} must be 0-255, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Colour:
        """Read ``RRGGBB`` or ``RRGGBBAA`` (hex)."""
        if not _COLOUR.fullmatch(text):
            raise InvalidPipeline(f"colour {text!r} is not RRGGBB or RRGGBBAA hex")
        values = [int(text[i : i + 2], 16) for i in range(0, len(text), 2)]
        return cls(*values)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour without alpha."""
        return (self.red, self.green, self.blue)

    @property
    def rgba(self) -> tuple[int, int, int, int]:
        """The colour with alpha."""
        return (self.red, self.green, self.blue, self.alpha)

    def __str__(self) -> str:
        text = "".join(f"{v:02x}" for v in self.rgb)
        return text if self.alpha == 255 else f"{text}{self.alpha:02x}"


WHITE: Final = Colour(255, 255, 255)


def _colour(value: Colour | str) -> Colour:
    return value if isinstance(value, Colour) else Colour.parse(value)


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
    colour: Colour = attrs.field(default=WHITE, converter=_colour)
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
    colour: Colour = attrs.field(default=WHITE, converter=_colour)
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


def _operation_from_json(obj: Mapping[str, Any]) -> Operation:
    fields = dict(_object(obj, "an operation"))
    kind = fields.pop("op", None)
    if kind not in OPERATIONS:
        raise InvalidPipeline(f"unknown operation {kind!r}")
    cls = OPERATIONS[kind]
    _known_fields(fields, {field.name for field in attrs.fields(cls)}, f"operation {kind!r}")
    return cls(**fields)


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidPipeline(f"{what} must be a JSON object, got {value!r}")
    return value


def _known_fields(obj: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise InvalidPipeline(f"{what} has no field {unknown[0]!r}; it has {sorted(known)}")


@attrs.frozen
class Encoding:
    """The output format of a variant and its settings (``quality=None``: the format's default)."""

    format: str = attrs.field(default="jpeg")
    quality: int | None = attrs.field(default=None)
    progressive: bool = attrs.field(default=False)
    lossless: bool = attrs.field(default=False)

    @progressive.validator
    @lossless.validator
    def _check_flag(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidPipeline(f"{attribute.name} must be true or false, got {value!r}")

    @format.validator
    def _check_format(self, _: object, value: str) -> None:
        if value not in OUTPUT_FORMATS and value != "original":
            known = sorted([*OUTPUT_FORMATS, "original"])
            raise InvalidPipeline(f"unknown output format {value!r}; use one of {known}")

    @quality.validator
    def _check_quality(self, _: object, value: int | None) -> None:
        if value is None:
            return
        if self.format not in DEFAULT_QUALITY:
            raise InvalidPipeline(f"{self.format} takes no quality")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
            raise InvalidPipeline(f"quality must be between 1 and 100, got {value}")

    def __attrs_post_init__(self) -> None:
        if self.progressive and self.format != "jpeg":
            raise InvalidPipeline("only jpeg can be progressive")
        if self.lossless and self.format != "webp":
            raise InvalidPipeline("only webp can be lossless")
        if self.lossless and self.quality is not None:
            raise InvalidPipeline("lossless webp takes no quality")

    def resolve(self, source_format: str) -> Encoding:
        """The concrete encoding: ``original`` becomes the source's format (PNG for formats we
        do not write, such as BMP)."""
        if self.format != "original":
            return self
        name = source_format.lower()
        return Encoding(name if name in OUTPUT_FORMATS else ORIGINAL_FALLBACK)

    @property
    def effective_quality(self) -> int | None:
        """The quality the encoder will use (None for lossless formats)."""
        if self.lossless:
            return None
        return self.quality if self.quality is not None else DEFAULT_QUALITY.get(self.format)

    @property
    def pillow_format(self) -> str:
        """Pillow's name for this format (not for ``original``: resolve it first)."""
        return OUTPUT_FORMATS[self.format].pillow

    @property
    def extension(self) -> str:
        """The file extension for outputs in this format."""
        return OUTPUT_FORMATS[self.format].extension

    @property
    def content_type(self) -> str:
        """The MIME type of outputs in this format."""
        return OUTPUT_FORMATS[self.format].content_type

    @property
    def animates(self) -> bool:
        """Whether this format can hold an animation."""
        return self.format in ("gif", "webp")

    def __str__(self) -> str:
        tokens = [self.format]
        if self.quality is not None:
            tokens.append(f"q{self.quality}")
        if self.progressive:
            tokens.append("progressive")
        if self.lossless:
            tokens.append("lossless")
        return ":".join(tokens)

    @classmethod
    def parse(cls, fmt: str, args: list[str]) -> Encoding:
        """Read an encoding token's arguments."""
        options: dict[str, Any] = {}
        for arg in args:
            match = _QUALITY.fullmatch(arg)
            key = "quality" if match else arg
            if key in options or key not in ("quality", "progressive", "lossless"):
                raise InvalidPipeline(f"{fmt} does not understand {arg!r}")
            options[key] = int(match.group(1)) if match else True
        return cls(fmt, **options)

    def to_json(self) -> dict[str, Any]:
        """This encoding as a JSON object."""
        return attrs.asdict(self)


def _operations(operations: Iterable[Operation]) -> tuple[Operation, ...]:
    return tuple(operations)


def _opaque(_: object, __: object, colour: Colour) -> Colour:
    # Flattening is onto an opaque colour: an opacity would be silently ignored.
    if colour.alpha != 255:
        raise InvalidPipeline(f"background must be opaque (RRGGBB), got {colour}")
    return colour


#: Variant options written as plain tokens in the text form, and their attribute names.
_FLAGS: Final = {
    "upscale": "upscale",
    "keep-metadata": "keep_metadata",
    "first-frame": "first_frame",
    "placeholder": "placeholder",
}


@attrs.frozen
class Variant:
    """One named output: operations applied in order, options, then an encoding."""

    name: str = attrs.field()
    operations: tuple[Operation, ...] = attrs.field(default=(), converter=_operations)
    encoding: Encoding = attrs.field(factory=Encoding)
    upscale: bool = attrs.field(default=False)
    keep_metadata: bool = attrs.field(default=False)
    first_frame: bool = attrs.field(default=False)
    placeholder: bool = attrs.field(default=False)
    background: Colour = attrs.field(default=WHITE, converter=_colour, validator=_opaque)

    @upscale.validator
    @keep_metadata.validator
    @first_frame.validator
    @placeholder.validator
    def _check_flag(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidPipeline(f"{attribute.name} must be true or false, got {value!r}")

    @name.validator
    def _check_name(self, _: object, value: str) -> None:
        if not _NAME.fullmatch(value):
            raise InvalidPipeline(
                f"variant name {value!r} must be 1-64 letters, digits, '_' or '-',"
                " starting with a letter or digit"
            )

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size of this variant's output for a ``width`` x ``height`` (upright) source."""
        for operation in self.operations:
            width, height = operation.target_size(width, height, upscale=self.upscale)
        return width, height

    def __str__(self) -> str:
        tokens = [str(op) for op in self.operations]
        tokens += [token for token, attr in _FLAGS.items() if getattr(self, attr)]
        if self.background != WHITE:
            tokens.append(f"background:{self.background}")
        tokens.append(str(self.encoding))
        return f"{self.name}={','.join(tokens)}"

    def to_json(self) -> dict[str, Any]:
        """This variant as a JSON object."""
        return {
            "name": self.name,
            "operations": [op.to_json() for op in self.operations],
            "encoding": self.encoding.to_json(),
            **{attr: getattr(self, attr) for attr in _FLAGS.values()},
            "background": str(self.background),
        }


def _split(text: str, separator: str, start: int) -> Iterator[tuple[str, int]]:
    """Split ``text`` on ``separator``, yielding each piece with its offset in the whole input."""
    offset = start
    for piece in text.split(separator):
        yield piece, offset
        offset += len(piece) + 1


def _tokens(body: str, start: int) -> Iterator[tuple[str, int]]:
    """The variant's tokens with their offsets. ``crop:x,y,w,h`` uses the token separator inside
    its argument, so a crop token takes the three pieces after it along."""
    pieces = list(_split(body, ",", start))
    index = 0
    while index < len(pieces):
        token, at = pieces[index]
        width = 4 if token.strip().startswith("crop:") else 1
        yield ",".join(piece for piece, _ in pieces[index : index + width]), at
        index += width


def _parse_variant(text: str, position: int, *, lone: bool) -> Variant:
    name, body, body_at = "default", text, position
    if "=" in text:
        raw_name, body = text.split("=", 1)
        body_at = position + len(raw_name) + 1
        name = raw_name.strip()  # "a=fit:1x1; b=png" reads as written
        if not _NAME.fullmatch(name):
            raise _fail(
                f"bad variant name {name!r}", position + len(raw_name) - len(raw_name.lstrip())
            )
    elif not lone:
        raise _fail(f"variant {text!r} needs a name (name=…) when there are several", position)
    operations: list[Operation] = []
    options: dict[str, Any] = {}
    encoding: Encoding | None = None
    for token, at in _tokens(body, body_at):
        op, *args = token.strip().split(":")
        try:
            if op in OPERATIONS:
                cls = OPERATIONS[op]
                if cls.needs_args and not args:
                    raise InvalidPipeline(f"{op} needs arguments, as in {_EXAMPLES[op]}")
                operations.append(cls.parse_args(args))
            elif op in OUTPUT_FORMATS or op == "original":
                if encoding is not None:
                    raise InvalidPipeline(f"a second output format (the variant has {encoding})")
                encoding = Encoding.parse(op, args)
            elif op in _FLAGS or op == "background":
                attribute = _FLAGS.get(op, op)
                if attribute in options:
                    raise InvalidPipeline(f"option {op!r} is given twice")
                if op == "background":
                    if len(args) != 1:
                        raise InvalidPipeline(
                            "background takes one colour, as in background:ffffff"
                        )
                    options[attribute] = _opaque(None, None, Colour.parse(args[0]))
                elif args:
                    raise InvalidPipeline(f"option {op!r} takes no arguments")
                else:
                    options[attribute] = True
            elif not op:
                raise InvalidPipeline("empty token")
            else:
                raise _unknown(op, token, at)
        except InvalidPipeline as error:
            if "(at character" in error.message:
                raise
            raise _fail(f"{error.message} in {token!r}", at) from error
    return Variant(name, tuple(operations), encoding or Encoding(), **options)


def _unknown(word: str, token: str, at: int) -> InvalidPipeline:
    known = [*OPERATIONS, *OUTPUT_FORMATS, "original", *_FLAGS, "background"]
    close = difflib.get_close_matches(word, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    where = f" in {token!r}" if token.strip() != word else ""
    return InvalidPipeline(
        f"unknown operation, format or option {word!r}{where} (at character {at + 1}){hint}"
    )


_EXAMPLES: Final = {
    "fit": "fit:800x600",
    "fill": "fill:256x256",
    "pad": "pad:800x600",
    "resize": "resize:800x",
    "crop": "crop:0,0,100,100",
    "rotate": "rotate:90",
    "flip": "flip:h",
    "blur": "blur:2",
}


def _modernised(obj: Mapping[str, Any]) -> Any:
    """``obj`` (a recorded pipeline's JSON) with what earlier versions wrote made valid now."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("variants"), list):
        return obj
    variants = []
    for variant in obj["variants"]:
        if not isinstance(variant, Mapping):
            return obj
        variant = dict(variant)
        background = variant.get("background")
        if isinstance(background, str) and len(background) == 8:
            variant["background"] = background[:6]  # the opacity was never applied
        encoding = variant.get("encoding")
        if isinstance(encoding, Mapping):
            quality = encoding.get("quality")
            if isinstance(quality, float) and math.isfinite(quality):
                variant["encoding"] = {**encoding, "quality": min(100, max(1, round(quality)))}
        operations = variant.get("operations")
        if isinstance(operations, list):
            variant["operations"] = [_modern_operation(op) for op in operations]
        variants.append(variant)
    return {**obj, "variants": variants}


def _modern_operation(op: Any) -> Any:
    if not isinstance(op, Mapping):
        return op
    op = dict(op)
    for field in ("sigma", "amount"):
        value = op.get(field)
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            op[field] = max(round(value, 4), 0.0001)
    return op


_VARIANT_FIELDS: Final = ("name", "operations", "encoding", "background", *_FLAGS.values())

#: How deeply arrays and objects may nest in a pipeline's JSON text. A valid pipeline nests five
#: deep; without a bound, a few kilobytes of brackets would exhaust Python's recursion limit
#: in the JSON decoder (a RecursionError, not an InvalidPipeline).
MAX_JSON_DEPTH: Final = 32


def _check_json_depth(text: str, limit: int) -> None:
    """Refuse ``text`` if its arrays and objects nest deeper than ``limit``, before any
    parser recurses into it: one pass, brackets inside strings not counted."""
    depth = 0
    in_string = escaped = False
    for position, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                raise _fail(f"pipeline JSON nests deeper than the limit of {limit}", position)
        elif char in "]}":
            depth -= 1


def _variants(variants: Iterable[Variant]) -> tuple[Variant, ...]:
    return tuple(variants)


def _unique_names(_: object, __: object, variants: tuple[Variant, ...]) -> None:
    if not variants:
        raise InvalidPipeline("a pipeline needs at least one variant")
    seen: set[str] = set()
    for variant in variants:
        if variant.name in seen:
            raise InvalidPipeline(f"variant name {variant.name!r} is used twice")
        seen.add(variant.name)


@attrs.frozen
class Pipeline:
    """One or more named variants to make from a single upload.

    Two pipelines are equal when they mean the same work, whichever form they were written in.
    """

    variants: tuple[Variant, ...] = attrs.field(converter=_variants, validator=_unique_names)

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        """Read the compact text form; :class:`~imageproc.InvalidPipeline` names any fault."""
        if not text.strip():
            raise InvalidPipeline("empty pipeline")
        pieces = list(_split(text, ";", 0))
        return cls(tuple(_parse_variant(piece, at, lone=len(pieces) == 1) for piece, at in pieces))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Pipeline:
        """Read the JSON form (as produced by :meth:`to_json`)."""
        try:
            _known_fields(_object(obj, "a pipeline"), ("variants",), "a pipeline")
            if not isinstance(obj["variants"], list):
                raise InvalidPipeline("variants must be a JSON array")
            variants = []
            for v in obj["variants"]:
                _known_fields(_object(v, "a variant"), _VARIANT_FIELDS, "a variant")
                if not isinstance(v["name"], str):
                    raise InvalidPipeline(f"a variant name must be text, got {v['name']!r}")
                operations = v.get("operations", [])
                if not isinstance(operations, list):
                    raise InvalidPipeline("operations must be a JSON array")
                encoding = _object(v.get("encoding", {}), "an encoding")
                _known_fields(encoding, [f.name for f in attrs.fields(Encoding)], "an encoding")
                background = v.get("background", str(WHITE))
                if not isinstance(background, str):
                    raise InvalidPipeline(f"background must be RRGGBB text, got {background!r}")
                variants.append(
                    Variant(
                        v["name"],
                        tuple(_operation_from_json(op) for op in operations),
                        Encoding(**encoding),
                        background=background,
                        **{attr: v.get(attr, False) for attr in _FLAGS.values()},
                    )
                )
            return cls(variants)
        except InvalidPipeline:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            what = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise InvalidPipeline(f"malformed pipeline JSON: {what}") from error

    @classmethod
    def from_json_text(cls, text: str) -> Pipeline:
        """Read the JSON form from its text, as a client sends it.

        Anything wrong is an :class:`~imageproc.InvalidPipeline`: text that does not parse, a
        document that is not an object, a document that is not a pipeline, and arrays or
        objects nested deeper than :data:`MAX_JSON_DEPTH` (checked before parsing).
        """
        _check_json_depth(text, MAX_JSON_DEPTH)
        try:
            document = json.loads(text)
        except ValueError as error:
            raise InvalidPipeline(f"pipeline JSON does not parse: {error}") from None
        if not isinstance(document, dict):
            raise InvalidPipeline("pipeline JSON must be an object")
        return cls.from_json(document)

    @classmethod
    def from_stored(cls, obj: Mapping[str, Any]) -> Pipeline:
        """Read a pipeline that a backend recorded, by this version or an earlier one.

        Earlier versions accepted, and so recorded, a few values the JSON form now refuses
        because the text form cannot write them: a background with an opacity (which was never
        used), a fractional quality, and a blur or sharpening with more than four decimals.
        Those are read as the nearest value the language has; anything else must be valid, as
        for :meth:`from_json`, or :class:`~imageproc.InvalidPipeline` is raised.
        """
        try:
            return cls.from_json(obj)
        except InvalidPipeline:
            return cls.from_json(_modernised(obj))

    def to_json(self) -> dict[str, Any]:
        """This pipeline as a JSON-serialisable object."""
        return {"variants": [variant.to_json() for variant in self.variants]}

    def __str__(self) -> str:
        return ";".join(str(variant) for variant in self.variants)


@attrs.frozen
class PipelineLimits:
    """Bounds on the work one pipeline may ask for, checked before a task is accepted."""

    max_variants: int = 10
    max_operations: int = 20
    max_side: int = 8192

    def check(self, pipeline: Pipeline) -> None:
        """Raise :class:`~imageproc.InvalidPipeline` if ``pipeline`` asks for too much."""
        if len(pipeline.variants) > self.max_variants:
            raise InvalidPipeline(
                f"{len(pipeline.variants)} variants, more than the limit of {self.max_variants}"
            )
        for variant in pipeline.variants:
            if len(variant.operations) > self.max_operations:
                raise InvalidPipeline(
                    f"variant {variant.name!r} has {len(variant.operations)} operations,"
                    f" more than the limit of {self.max_operations}"
                )
            for op in variant.operations:
                if max(op.sides(), default=0) > self.max_side:
                    raise InvalidPipeline(
                        f"{op} in variant {variant.name!r} is larger than the limit of"
                        f" {self.max_side} pixels a side"
                    )


#: One JPEG variant 800 pixels wide, never enlarged: what a task gets when it names no pipeline.
DEFAULT_PIPELINE: Final = Pipeline((Variant("default", (Resize(width=800),), Encoding("jpeg")),))
