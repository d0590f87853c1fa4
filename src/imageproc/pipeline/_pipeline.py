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

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from imageproc.errors import InvalidPipeline
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._json import json_document, modernised, pipeline_from_json
from imageproc.pipeline._operations import Resize
from imageproc.pipeline._text import parse_pipeline
from imageproc.pipeline._variant import Variant

__all__ = ["DEFAULT_PIPELINE", "Pipeline", "PipelineLimits"]


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
        return parse_pipeline(cls, text)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Pipeline:
        """Read the JSON form (as produced by :meth:`to_json`)."""
        return pipeline_from_json(cls, obj)

    @classmethod
    def from_json_text(cls, text: str) -> Pipeline:
        """Read the JSON form from its text, as a client sends it.

        Anything wrong is an :class:`~imageproc.InvalidPipeline`: text that does not parse, a
        document that is not an object, a document that is not a pipeline, and arrays or
        objects nested deeper than :data:`MAX_JSON_DEPTH` (checked before parsing).
        """
        return cls.from_json(json_document(text))

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
            return cls.from_json(modernised(obj))

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
