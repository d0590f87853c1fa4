"""What only one setting of :class:`~imageproc.config.Settings` reads or checks (the common
kinds of value are :mod:`imageproc._parsing`'s): each check raises ValueError with what was
expected, which the settings turn into a ConfigurationError naming the variable."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "check_allow",
    "check_api_keys",
    "check_isolation",
    "check_log_level",
    "check_max_priority",
    "check_presets",
    "check_root_path",
    "check_webhook_secrets",
    "check_webhook_urls",
    "pairs",
    "parse_presets",
    "parse_urls",
]

#: The log levels ``log_level`` accepts.
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
#: Where a task's image work may run (the ``isolation`` setting).
ISOLATIONS: Final = ("process", "thread")


def parse_presets(text: str) -> tuple[tuple[str, str], ...]:
    # Pipelines use ',', ';', '=' and ':' themselves, so the map is a JSON object.
    if not text.strip():
        return ()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # nested past the recursion limit
        raise ValueError(
            'expected a JSON object of name → pipeline, such as {"avatar": "fill:96x96,webp"}'
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object of name → pipeline, got {type(value).__name__}")
    return tuple(value.items())


def parse_urls(text: str) -> tuple[tuple[str, str], ...]:
    # URLs hold ':' and ',' themselves, so the map is a JSON object too.
    pairs = parse_presets(text) if text.strip() else ()
    if any(not isinstance(url, str) for _, url in pairs):
        raise ValueError('expected a JSON object of owner → URL, such as {"*": "https://…"}')
    return pairs


def check_webhook_secrets(value: tuple[str, ...]) -> None:
    from imageproc.delivery._webhooks import Webhooks

    if value:
        Webhooks(secrets=value)  # its checks, without echoing a secret


def check_webhook_urls(value: tuple[tuple[str, str], ...]) -> None:
    from imageproc._addresses import AddressPolicy
    from imageproc.errors import UnsafeURL

    for owner, url in value:
        try:  # the form only: where it points is checked at each delivery
            AddressPolicy(allow=("0.0.0.0/0", "::/0")).check_url(url, what=f"URL of {owner!r}")
        except UnsafeURL as error:
            raise ValueError(error.message) from None


def check_allow(value: tuple[str, ...]) -> None:
    from imageproc._addresses import AddressPolicy

    AddressPolicy(allow=value)


def pairs(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = value.items() if isinstance(value, Mapping) else value
    return tuple((preset, text) for preset, text in pairs)


def check_api_keys(value: str) -> None:
    # The HTTP adapter's own parser, so a bad pair is refused at startup with the same message the
    # adapter would give. It never echoes a key.
    from imageproc._signing import parse_api_keys

    parse_api_keys(value)


def check_max_priority(value: str) -> None:
    from imageproc._signing import parse_max_priorities

    parse_max_priorities(value)


def check_presets(value: tuple[tuple[str, str], ...]) -> None:
    from imageproc.errors import InvalidPipeline
    from imageproc.pipeline._pipeline import Pipeline

    for name, pipeline in value:
        if not isinstance(name, str) or not name or not isinstance(pipeline, str):
            raise ValueError(f"preset {name!r} must be a name and a pipeline's text")
        try:
            Pipeline.parse(pipeline)
        except InvalidPipeline as error:
            raise ValueError(f"preset {name!r}: {error.message}") from None


def check_root_path(value: str) -> None:
    if value and (not value.startswith("/") or value.endswith("/")):
        raise ValueError(f"must start with / and not end with one, such as /images; got {value!r}")


def check_isolation(value: str) -> None:
    if value not in ISOLATIONS:
        raise ValueError(f"must be one of {', '.join(ISOLATIONS)}, got {value!r}")


def check_log_level(value: str) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
