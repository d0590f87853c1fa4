"""How a command reports back: its exit status, an error in one line on stderr (never a
traceback), and URLs as the log may show them (without a password)."""

from __future__ import annotations

import sys

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "fail", "safe_url"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage found after parsing (exit 2), as opposed to work that failed (exit 1)."""


def fail(message: str, status: int) -> int:
    print(f"imageproc: error: {message}", file=sys.stderr)
    return status


def safe_url(url: str) -> str:
    # A database URL may hold a password (a storage URL seldom does, but may): the log gets the
    # scheme and what follows any "user:password@".
    scheme, separator, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if separator else url
