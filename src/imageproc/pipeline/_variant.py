"""One named output of a pipeline: a :class:`Variant`'s operations, options and encoding, and
the rules its name and options follow (shared with the text and JSON readers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import attrs

from imageproc.errors import InvalidPipeline
from imageproc.pipeline._colour import WHITE, Colour, as_colour
from imageproc.pipeline._encoding import Encoding
from imageproc.pipeline._operations import Operation

__all__ = ["FLAGS", "NAME", "Variant", "opaque"]

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
