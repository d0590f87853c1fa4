"""A variant's output format and its settings: :class:`Encoding` (``webp:q80``,
``jpeg:q85:progressive``, ``original``), with the qualities used when it names none. Model: it
imports nothing of ours but the errors and the format table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from imageproc._formats import OUTPUT_FORMATS
from imageproc.errors import InvalidPipeline

__all__ = ["DEFAULT_QUALITY", "ORIGINAL_FALLBACK", "Encoding"]

# [0-9], never \d (any Unicode digit): see the note in imageproc.pipeline._operations.
_QUALITY = re.compile(r"q([0-9]{1,3})")

#: Quality used when a lossy encoding names none (imgproxy's choices for WebP and AVIF).
DEFAULT_QUALITY: Final[Mapping[str, int]] = {"jpeg": 85, "webp": 79, "avif": 63}
#: What ``original`` becomes for input formats we do not write (BMP).
ORIGINAL_FALLBACK: Final = "png"


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
