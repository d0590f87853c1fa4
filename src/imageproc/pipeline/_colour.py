"""The colours a pipeline names: :class:`Colour` (``RRGGBB`` or ``RRGGBBAA``), and white, the
default of every colour option. Model: it imports nothing of ours but the errors.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from imageproc.errors import InvalidPipeline

__all__ = ["WHITE", "Colour", "as_colour"]

_COLOUR = re.compile(r"[0-9a-fA-F]{6}(?:[0-9a-fA-F]{2})?")


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


def as_colour(value: Colour | str) -> Colour:
    return value if isinstance(value, Colour) else Colour.parse(value)
