"""Which pipeline an upload asks for: a preset by name, or a pipeline (a value, its text or its
JSON) checked against the limits, and, where only presets are accepted, nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

from imageproc.errors import InvalidPipeline
from imageproc.pipeline._pipeline import Pipeline, PipelineLimits

__all__ = ["resolve_pipeline"]


def resolve_pipeline(
    spec: Pipeline | str,
    presets: Mapping[str, Pipeline],
    limits: PipelineLimits,
    *,
    presets_only: bool = False,
) -> Pipeline:
    """The pipeline ``spec`` names: a preset's, or ``spec`` itself read and checked against
    ``limits``; with ``presets_only``, only the presets' work, in whichever form it comes.
    :class:`~imageproc.InvalidPipeline` says what is wrong otherwise."""
    if isinstance(spec, str) and spec in presets:
        return presets[spec]
    if presets_only:
        # Only the work the presets describe, in whichever form it comes: a Pipeline value
        # (or JSON) or text equal to a preset is that preset; anything else is refused.
        try:
            pipeline = spec if isinstance(spec, Pipeline) else Pipeline.parse(spec)
        except InvalidPipeline:
            pipeline = None
        if pipeline is not None and pipeline in presets.values():
            return pipeline
        names = ", ".join(sorted(presets)) or "none are configured"
        raise InvalidPipeline(f"only presets are accepted here ({names}), got {str(spec)!r}")
    if isinstance(spec, Pipeline):
        limits.check(spec)
        return spec
    try:
        if len(spec) > _CACHED_TEXT_CHARS:
            return _parse_checked.__wrapped__(spec, limits)
        return _parse_checked(spec, limits)
    except InvalidPipeline:
        if presets and _looks_like_a_name(spec):
            names = ", ".join(sorted(presets))
            raise InvalidPipeline(
                f"{spec!r} is neither a preset ({names}) nor a pipeline"
            ) from None
        raise


#: Pipeline texts up to this long are parsed once and remembered (clients send the same few).
_CACHED_TEXT_CHARS: Final = 1024


@functools.lru_cache(maxsize=256)
def _parse_checked(text: str, limits: PipelineLimits) -> Pipeline:
    # Pipelines and limits are frozen, so a parse can be shared; a refusal is not cached.
    pipeline = Pipeline.parse(text)
    limits.check(pipeline)
    return pipeline


def _looks_like_a_name(text: str) -> bool:
    """Whether ``text`` is a bare word (a misspelt preset), not an attempt at a pipeline."""
    return bool(text) and not any(mark in text for mark in ":,;= ")
