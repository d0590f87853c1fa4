"""What to make from one upload: a :class:`Pipeline` of named :class:`Variant`\\ s.

Each variant is a chain of operations and one output :class:`Encoding`. A pipeline has a compact
text form (used by the CLI and the HTTP API) and a JSON form; both round-trip exactly::

    thumb=fit:256x256,webp:q80;large=fit:1600x1600,jpeg:q85

Variants are separated by ``;``; each is ``name=`` (optional for a lone variant, which is then
called ``default``) followed by tokens separated by ``,``; a token is ``op`` or ``op:arg:arg``.
The encoding token may be left out (JPEG at its default quality). ``upscale`` lets a variant's
operations enlarge the image, which they never do otherwise.

This module only describes work; :mod:`imageproc.imaging` carries it out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final

import attrs

from imageproc.errors import InvalidPipeline

__all__ = [
    "DEFAULT_PIPELINE",
    "Encoding",
    "Fit",
    "Operation",
    "Pipeline",
    "PipelineLimits",
    "Resize",
    "Variant",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_SIZE = re.compile(r"(\d{1,6})?x(\d{1,6})?")
_QUALITY = re.compile(r"q(\d{1,3})")

#: Output formats: the name used in pipelines, Pillow's format name, the file extension and
#: content type of the result.
FORMATS: Final[Mapping[str, tuple[str, str, str]]] = {
    "jpeg": ("JPEG", "jpg", "image/jpeg"),
    "png": ("PNG", "png", "image/png"),
    "webp": ("WEBP", "webp", "image/webp"),
}
#: Quality used when a lossy encoding names none (imgproxy's choices for WebP).
DEFAULT_QUALITY: Final[Mapping[str, int]] = {"jpeg": 85, "webp": 79}


def _fail(message: str, position: int) -> InvalidPipeline:
    return InvalidPipeline(f"{message} (at character {position + 1})")


def _positive(value: int, what: str) -> None:
    if value < 1:
        raise InvalidPipeline(f"{what} must be at least 1, got {value}")


@attrs.frozen
class Fit:
    """``fit:WxH``: scale to fit inside the box, keeping the aspect ratio."""

    width: int = attrs.field()
    height: int = attrs.field()
    op: ClassVar[str] = "fit"

    @width.validator
    @height.validator
    def _check(self, attribute: attrs.Attribute[int], value: int) -> None:
        _positive(value, f"fit {attribute.name}")

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        """The size this operation turns a ``width`` x ``height`` image into."""
        scale = min(self.width / width, self.height / height)
        if scale >= 1 and not upscale:
            return width, height
        return max(1, round(width * scale)), max(1, round(height * scale))

    def __str__(self) -> str:
        return f"fit:{self.width}x{self.height}"

    def to_json(self) -> dict[str, Any]:
        """This operation as a JSON object."""
        return {"op": self.op, "width": self.width, "height": self.height}


@attrs.frozen
class Resize:
    """``resize:WxH`` (exact size, ignoring aspect), ``resize:Wx`` or ``resize:xH`` (one side)."""

    width: int | None = attrs.field(default=None)
    height: int | None = attrs.field(default=None)
    op: ClassVar[str] = "resize"

    @width.validator
    @height.validator
    def _check(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None:
            _positive(value, f"resize {attribute.name}")

    def __attrs_post_init__(self) -> None:
        if self.width is None and self.height is None:
            raise InvalidPipeline("resize needs a width, a height or both")

    def target_size(self, width: int, height: int, *, upscale: bool) -> tuple[int, int]:
        """The size this operation turns a ``width`` x ``height`` image into."""
        if self.width is not None and self.height is not None:
            new = (self.width, self.height)
            if not upscale:
                new = (min(new[0], width), min(new[1], height))
            return new
        scale = self.width / width if self.width is not None else self.height / height  # type: ignore[operator]
        if scale >= 1 and not upscale:
            return width, height
        return max(1, round(width * scale)), max(1, round(height * scale))

    def __str__(self) -> str:
        return f"resize:{self.width or ''}x{self.height or ''}"

    def to_json(self) -> dict[str, Any]:
        """This operation as a JSON object."""
        return {"op": self.op, "width": self.width, "height": self.height}


Operation = Fit | Resize


def _parse_size(op: str, args: list[str], position: int, *, partial: bool) -> tuple[int, int]:
    match = _SIZE.fullmatch(args[0]) if len(args) == 1 else None
    if match is None or (not partial and None in match.groups()) or match.groups() == (None, None):
        wanted = "WxH, Wx or xH" if partial else "WxH"
        raise _fail(f"{op} takes a size {wanted}, got {':'.join(args)!r}", position)
    w, h = match.groups()
    return int(w) if w else 0, int(h) if h else 0


def _parse_fit(args: list[str], position: int) -> Operation:
    width, height = _parse_size("fit", args, position, partial=False)
    return Fit(width, height)


def _parse_resize(args: list[str], position: int) -> Operation:
    width, height = _parse_size("resize", args, position, partial=True)
    return Resize(width or None, height or None)


_OPERATION_PARSERS: Final[Mapping[str, Callable[[list[str], int], Operation]]] = {
    "fit": _parse_fit,
    "resize": _parse_resize,
}


def _operation_from_json(obj: Mapping[str, Any]) -> Operation:
    kind = obj.get("op")
    if kind == "fit":
        return Fit(int(obj["width"]), int(obj["height"]))
    if kind == "resize":
        width, height = obj.get("width"), obj.get("height")
        return Resize(
            None if width is None else int(width), None if height is None else int(height)
        )
    raise InvalidPipeline(f"unknown operation {kind!r}")


@attrs.frozen
class Encoding:
    """The output format of a variant, with its quality (``None``: the format's default)."""

    format: str = attrs.field(default="jpeg")
    quality: int | None = attrs.field(default=None)

    @format.validator
    def _check_format(self, _: attrs.Attribute[str], value: str) -> None:
        if value not in FORMATS:
            raise InvalidPipeline(f"unknown output format {value!r}; use one of {sorted(FORMATS)}")

    @quality.validator
    def _check_quality(self, _: attrs.Attribute[int | None], value: int | None) -> None:
        if value is None:
            return
        if self.format not in DEFAULT_QUALITY:
            raise InvalidPipeline(f"{self.format} takes no quality")
        if not 1 <= value <= 100:
            raise InvalidPipeline(f"quality must be between 1 and 100, got {value}")

    @property
    def effective_quality(self) -> int | None:
        """The quality the encoder will use."""
        return self.quality if self.quality is not None else DEFAULT_QUALITY.get(self.format)

    @property
    def pillow_format(self) -> str:
        """Pillow's name for this format."""
        return FORMATS[self.format][0]

    @property
    def extension(self) -> str:
        """The file extension for outputs in this format."""
        return FORMATS[self.format][1]

    @property
    def content_type(self) -> str:
        """The MIME type of outputs in this format."""
        return FORMATS[self.format][2]

    def __str__(self) -> str:
        return self.format if self.quality is None else f"{self.format}:q{self.quality}"

    def to_json(self) -> dict[str, Any]:
        """This encoding as a JSON object."""
        return {"format": self.format, "quality": self.quality}


def _operations(operations: Iterable[Operation]) -> tuple[Operation, ...]:
    return tuple(operations)


@attrs.frozen
class Variant:
    """One named output: operations applied in order, then an encoding."""

    name: str = attrs.field()
    operations: tuple[Operation, ...] = attrs.field(default=(), converter=_operations)
    encoding: Encoding = attrs.field(factory=Encoding)
    upscale: bool = False

    @name.validator
    def _check_name(self, _: attrs.Attribute[str], value: str) -> None:
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
        if self.upscale:
            tokens.append("upscale")
        tokens.append(str(self.encoding))
        return f"{self.name}={','.join(tokens)}"

    def to_json(self) -> dict[str, Any]:
        """This variant as a JSON object."""
        return {
            "name": self.name,
            "operations": [op.to_json() for op in self.operations],
            "encoding": self.encoding.to_json(),
            "upscale": self.upscale,
        }


def _split(text: str, separator: str, start: int) -> Iterator[tuple[str, int]]:
    """Split ``text`` on ``separator``, yielding each piece with its offset in the whole input."""
    offset = start
    for piece in text.split(separator):
        yield piece, offset
        offset += len(piece) + 1


def _parse_variant(text: str, position: int, *, lone: bool) -> Variant:
    name, body, body_at = "default", text, position
    if "=" in text:
        name, body = text.split("=", 1)
        body_at = position + len(name) + 1
        if not _NAME.fullmatch(name):
            raise _fail(f"bad variant name {name!r}", position)
    elif not lone:
        raise _fail(f"variant {text!r} needs a name (name=…) when there are several", position)
    operations: list[Operation] = []
    encoding: Encoding | None = None
    upscale = False
    for token, at in _split(body, ",", body_at):
        op, *args = token.strip().split(":")
        try:
            if op in _OPERATION_PARSERS:
                if not args:
                    raise _fail(f"{op} needs arguments, as in {op}:800x600", at)
                operations.append(_OPERATION_PARSERS[op](args, at))
            elif op in FORMATS:
                if encoding is not None:
                    raise _fail(f"second output format {token!r} in variant {name!r}", at)
                encoding = _parse_encoding(op, args, at)
            elif op == "upscale" and not args:
                upscale = True
            elif not op:
                raise _fail("empty token", at)
            else:
                raise _fail(f"unknown operation {token!r}", at)
        except InvalidPipeline as error:
            if "(at character" in error.message:
                raise
            raise _fail(f"{error.message} in {token!r}", at) from error
    return Variant(name, tuple(operations), encoding or Encoding(), upscale)


def _parse_encoding(fmt: str, args: list[str], position: int) -> Encoding:
    quality = None
    for arg in args:
        match = _QUALITY.fullmatch(arg)
        if match is None or quality is not None:
            raise _fail(f"{fmt} does not understand {arg!r}", position)
        quality = int(match.group(1))
    return Encoding(fmt, quality)


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
            return cls(
                tuple(
                    Variant(
                        str(v["name"]),
                        tuple(_operation_from_json(op) for op in v.get("operations", ())),
                        Encoding(**v.get("encoding", {})),
                        bool(v.get("upscale", False)),
                    )
                    for v in obj["variants"]
                )
            )
        except InvalidPipeline:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            what = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise InvalidPipeline(f"malformed pipeline JSON: {what}") from error

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
                if max(op.width or 0, op.height or 0) > self.max_side:
                    raise InvalidPipeline(
                        f"{op} in variant {variant.name!r} is larger than the limit of"
                        f" {self.max_side} pixels a side"
                    )


#: One JPEG variant 800 pixels wide, never enlarged: what a task gets when it names no pipeline.
DEFAULT_PIPELINE: Final = Pipeline((Variant("default", (Resize(width=800),), Encoding("jpeg")),))
