"""The JSON form of a pipeline, and its readers (what :meth:`Pipeline.from_json`,
:meth:`Pipeline.from_json_text` and :meth:`Pipeline.from_stored` call): the nesting depth checked
before any parser recurses, and the values earlier versions recorded, read as the nearest ones the
language has now. Writing JSON is each class's own ``to_json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs

from imageproc.errors import InvalidPipeline
from imageproc.pipeline._colour import WHITE
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._operations import OPERATIONS, Operation
from imageproc.pipeline._text import fail
from imageproc.pipeline._variant import FLAGS, Variant

__all__ = ["MAX_JSON_DEPTH", "json_document", "modernised", "pipeline_from_json"]

#: What a reader builds: a Pipeline, which it is handed (so it needs no import of it).
P = TypeVar("P")

_VARIANT_FIELDS: Final = ("name", "operations", "encoding", "background", *FLAGS.values())

#: How deeply arrays and objects may nest in a pipeline's JSON text. A valid pipeline nests five
#: deep; without a bound, a few kilobytes of brackets would exhaust Python's recursion limit
#: in the JSON decoder (a RecursionError, not an InvalidPipeline).
MAX_JSON_DEPTH: Final = 32


def pipeline_from_json(cls: Callable[[tuple[Variant, ...]], P], obj: Mapping[str, Any]) -> P:
    """Read the JSON form into a ``cls``, made from its variants (:meth:`Pipeline.from_json`)."""
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
                    **{attr: v.get(attr, False) for attr in FLAGS.values()},
                )
            )
        return cls(tuple(variants))
    except InvalidPipeline:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        what = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise InvalidPipeline(f"malformed pipeline JSON: {what}") from error


def json_document(text: str) -> dict[str, Any]:
    """The JSON object a pipeline's text holds, for :meth:`Pipeline.from_json_text` to read;
    :class:`~imageproc.InvalidPipeline` if it does not parse or is not an object."""
    _check_json_depth(text, MAX_JSON_DEPTH)
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidPipeline(f"pipeline JSON does not parse: {error}") from None
    if not isinstance(document, dict):
        raise InvalidPipeline("pipeline JSON must be an object")
    return document


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
                raise fail(f"pipeline JSON nests deeper than the limit of {limit}", position)
        elif char in "]}":
            depth -= 1


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


def modernised(obj: Mapping[str, Any]) -> Any:
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
