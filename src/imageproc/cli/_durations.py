"""Durations as ``purge --older-than`` takes them and says them back: ``30d``, ``12h``, ``90m``."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Final

__all__ = ["parse_duration", "say_duration"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``30d`` → 30 days: whole seconds, minutes, hours, days or weeks (the argparse type)."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    # isdigit() alone would pass other scripts' digits (and superscripts int() then refuses).
    if unit not in _UNITS or not (number.isascii() and number.isdigit()):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30d, 12h or 90m, got {text!r}"
        )
    try:
        return timedelta(seconds=int(number) * _UNITS[unit])
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than a duration can be") from None


def say_duration(duration: timedelta) -> str:
    """A duration in the largest unit that divides it (``30d``, ``90m``), as ``--older-than``
    takes it."""
    seconds = int(duration.total_seconds())
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
