"""Setting values: how each kind is read from text (as the environment, a ``.env`` file or a flag
gives it) or taken as a Python value, and checked. Whole numbers and reals in ASCII digits only,
byte sizes, worker counts, booleans, lists, words: a :class:`ValueSpec` each. Every parser and
check raises :class:`ValueError` with a message fit for the user. Imports nothing of ours."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import NoneType
from typing import Any, Final

import attrs

__all__ = [
    "COUNT",
    "FLAG",
    "LIMIT",
    "OPTIONAL_TEXT",
    "SECONDS",
    "TEXT",
    "ValueSpec",
    "check_optional_positive",
    "check_port",
    "check_positive",
    "check_positive_int",
    "check_workers",
    "no_check",
    "optional",
    "parse_bool",
    "parse_byte_size",
    "parse_list",
    "parse_real",
    "parse_text",
    "parse_whole_number",
    "parse_word",
    "parse_workers",
    "texts",
    "worker_range",
]

# -- parsers ----------------------------------------------------------------------------------


# ASCII digits only: int() and float() also read other scripts' digits (Arabic-Indic, fullwidth…)
# and underscores ("1_000"), which no configuration or request needs and a filter would miss.
_WHOLE: Final = re.compile(r"[-+]?[0-9]{1,18}")
_REAL: Final = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")


def parse_whole_number(text: str) -> int:
    """A whole number written in ASCII digits, with an optional sign and surrounding spaces:
    ``"8000"``, ``" -5 "``. Unlike :func:`int`, refuses other scripts' digits and ``_``.

    Raises :class:`ValueError` with a message fit for the user.
    """
    if not _WHOLE.fullmatch(text.strip()):
        raise ValueError(f"expected a whole number, got {text!r}{_ascii_hint(text)}")
    return int(text.strip())


def _ascii_hint(text: str) -> str:
    # Fullwidth digits look like ASCII ones: "expected a whole number" alone would puzzle.
    if any(not c.isascii() and c.isdigit() for c in text) or "_" in text:
        return " (only the ASCII digits 0-9, without '_')"
    return ""


def parse_workers(text: str) -> tuple[int, int]:
    """``"4"`` → ``(4, 4)``; ``"2:8"`` → ``(2, 8)`` (at least one worker, min ≤ max).

    Raises :class:`ValueError` with a message fit for the user.
    """
    low_text, sep, high_text = text.strip().partition(":")
    try:
        low = parse_whole_number(low_text)
        high = parse_whole_number(high_text) if sep else low
    except ValueError:
        raise ValueError(f"expected a count N or MIN:MAX, got {text!r}") from None
    check_workers((low, high))
    return low, high


def check_workers(value: tuple[int, int]) -> None:
    low, high = value
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= MIN <= MAX, got {low}:{high}")


def worker_range(value: Any) -> tuple[int, int]:
    """Worker counts given as a Python value, ``4`` or ``(2, 8)``, as ``(min, max)``."""
    value = (value, value) if isinstance(value, int) else tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"expected (MIN, MAX), got {value!r}")
    low, high = value
    return low, high


# Bare K/M/G are binary, as in nginx's client_max_body_size; kB/MB/GB are decimal, KiB/MiB/GiB
# binary, so every common spelling means what its reader expects.
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE: Final = re.compile(r"\s*([0-9]+)\s*([A-Za-z]*)\s*")


def parse_byte_size(text: str) -> int:
    """A byte count: ``"1048576"``, ``"512K"``, ``"50MiB"``, ``"10MB"`` (decimal), ``"1G"``.

    Bare ``K``, ``M``, ``G`` and ``KiB``, ``MiB``, ``GiB`` are powers of 1024; ``kB``, ``MB``,
    ``GB`` powers of 1000; case does not matter. Raises :class:`ValueError`.
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a byte size such as 1048576, 512K or 50MiB, got {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_real(text: str) -> float:
    if not _REAL.fullmatch(text.strip()):
        raise ValueError(f"expected a finite number, got {text!r}{_ascii_hint(text)}")
    value = float(text.strip())
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    # An empty value (IMAGEPROC_METRICS_PORT=) or "none" switches an optional setting off, so a
    # .env default can be cleared from the environment.
    def parser(text: str) -> Any:
        return None if text.strip().lower() in ("", "none", "off") else parse(text)

    return parser


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def texts(value: Any) -> tuple[str, ...]:
    return tuple(str(key) for key in value)


def parse_text(text: str) -> str:
    return text.strip()


_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off", "")


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(f"expected true or false, got {text!r}")
    return word in _TRUE


def parse_word(text: str) -> str:
    return text.strip().lower()


# -- checks (also run on values given as Python objects) --------------------------------------


def check_nonempty(value: str) -> None:
    if not value:
        raise ValueError("must not be empty")


def check_positive_int(value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"must be at least 1, got {value}")


def check_port(value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise ValueError(f"must be a port number from 1 to 65535, got {value}")


def check_positive(value: float) -> None:
    if not value > 0:
        raise ValueError(f"must be positive, got {value}")


def check_optional_positive(value: float | None) -> None:
    if value is not None:
        check_positive(value)


def no_check(value: Any) -> None:
    pass


# -- kinds of value -----------------------------------------------------------------------------


@attrs.frozen
class ValueSpec:
    """How a value is read: ``parse`` its text, accept Python values of ``types`` (made whole
    by ``convert``; a whole number of seconds becomes float by itself), then ``check`` it."""

    parse: Callable[[str], Any]
    check: Callable[[Any], None]
    types: tuple[type, ...]
    convert: Callable[[Any], Any] | None = None

    def coerce(self, value: Any) -> Any:
        """``value`` (text, or already a Python value) as this kind of value is held."""
        if isinstance(value, str):
            value = self.parse(value)
        elif (isinstance(value, bool) and bool not in self.types) or not isinstance(
            value, self.types
        ):
            raise ValueError(
                f"expected text or {self.types[0].__name__}, got {type(value).__name__}"
            )
        if self.convert is not None:
            value = self.convert(value)
        elif float in self.types and isinstance(value, int):  # seconds given as a whole number
            value = float(value)
        self.check(value)
        return value


# The kinds most settings share.
TEXT: Final = ValueSpec(parse_text, check_nonempty, (str,))
OPTIONAL_TEXT: Final = ValueSpec(optional(parse_text), no_check, (str, NoneType))
FLAG: Final = ValueSpec(parse_bool, no_check, (bool,))
COUNT: Final = ValueSpec(parse_whole_number, check_positive_int, (int,))
#: An optional bound: a count of at least 1, or None (no bound).
LIMIT: Final = ValueSpec(optional(parse_whole_number), check_positive_int, (int, NoneType))
SECONDS: Final = ValueSpec(parse_real, check_positive, (int, float))
