"""What to make from one upload: a :class:`Pipeline` of named :class:`Variant`\\ s.

Each variant is a chain of operations, some options, and one output :class:`Encoding`. A pipeline
has a compact text form (used by the CLI and the HTTP API) and a JSON form; both round-trip
exactly, and two pipelines are equal when they mean the same work. The text form is read by
:mod:`imageproc.pipeline._text`, the JSON form by :mod:`imageproc.pipeline._json`: the
classmethods here (:meth:`Pipeline.parse`, :meth:`Pipeline.from_json`, ...) call them.
:class:`PipelineLimits` bounds the work one pipeline may ask for.

This module only describes work; :mod:`imageproc.engine._imaging` carries it out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from imageproc.errors import InvalidPipeline
from imageproc.pipeline._colour import WHITE, Colour, as_colour
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._operations import Operation, Resize

__all__ = ["DEFAULT_PIPELINE", "FLAGS", "NAME", "Pipeline", "PipelineLimits", "Variant", "opaque"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _operations(operations: Iterable[Operation]) -> tuple[Operation, ...]:
    return tuple(operations)


def opaque(_: object, __: object, colour: Colour) -> Colour:
    # Flattening is onto an opaque colour: an opacity would be silently ignored.
    if colour.alpha != 255:
        raise InvalidPipeline(f"background must be opaque (RRGGBB), got {colour}")
    return colour


#: Variant options written as plain tokens in the text form, and their attribute names.
FLAGS: Final = {
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
    background: Colour = attrs.field(default=WHITE, converter=as_colour, validator=opaque)

    @upscale.validator
    @keep_metadata.validator
    @first_frame.validator
    @placeholder.validator
    def _check_flag(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidPipeline(f"{attribute.name} must be true or false, got {value!r}")

    @name.validator
    def _check_name(self, _: object, value: str) -> None:
        if not NAME.fullmatch(value):
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
        tokens += [token for token, attr in FLAGS.items() if getattr(self, attr)]
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
            **{attr: getattr(self, attr) for attr in FLAGS.values()},
            "background": str(self.background),
        }


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
        from imageproc.pipeline._text import parse_pipeline

        return parse_pipeline(cls, text)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Pipeline:
        """Read the JSON form (as produced by :meth:`to_json`)."""
        from imageproc.pipeline._json import pipeline_from_json

        return pipeline_from_json(cls, obj)

    @classmethod
    def from_json_text(cls, text: str) -> Pipeline:
        """Read the JSON form from its text, as a client sends it.

        Anything wrong is an :class:`~imageproc.InvalidPipeline`: text that does not parse, a
        document that is not an object, a document that is not a pipeline, and arrays or
        objects nested deeper than :data:`MAX_JSON_DEPTH` (checked before parsing).
        """
        from imageproc.pipeline._json import pipeline_from_json_text

        return pipeline_from_json_text(cls, text)

    @classmethod
    def from_stored(cls, obj: Mapping[str, Any]) -> Pipeline:
        """Read a pipeline that a backend recorded, by this version or an earlier one.

        Earlier versions accepted, and so recorded, a few values the JSON form now refuses
        because the text form cannot write them: a background with an opacity (which was never
        used), a fractional quality, and a blur or sharpening with more than four decimals.
        Those are read as the nearest value the language has; anything else must be valid, as
        for :meth:`from_json`, or :class:`~imageproc.InvalidPipeline` is raised.
        """
        from imageproc.pipeline._json import pipeline_from_stored

        return pipeline_from_stored(cls, obj)

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
