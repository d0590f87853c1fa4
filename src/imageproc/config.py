"""All of imageproc's service configuration in one place: :class:`Settings`.

Every setting comes, in this order of precedence, from an explicit override (a command-line
flag), the environment (``IMAGEPROC_<NAME>``), a ``.env`` file, or its default::

    settings = Settings.load()                              # environment, then ./.env
    settings = Settings.load(port=9000, env_file=None)      # an override, no .env file
    processor = settings.processor()                        # Processor.from_urls(…)

Text values are parsed the same way wherever they come from (see :data:`ENV_VARS` for the names);
anything malformed raises :class:`~imageproc.ConfigurationError` with a one-line message that
names the variable or flag and the value's source.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import NoneType
from typing import TYPE_CHECKING, Any, Final

import attrs

from imageproc import _settingchecks as checks
from imageproc._parsing import (
    COUNT,
    FLAG,
    LIMIT,
    OPTIONAL_TEXT,
    SECONDS,
    TEXT,
    ValueSpec,
    check_optional_positive,
    check_port,
    check_positive_int,
    check_workers,
    no_check,
    optional,
    parse_byte_size,
    parse_list,
    parse_real,
    parse_text,
    parse_whole_number,
    parse_word,
    parse_workers,
    texts,
    worker_range,
)
from imageproc._settingchecks import LOG_LEVELS
from imageproc.errors import ConfigurationError

if TYPE_CHECKING:
    from imageproc._fetching import Fetching
    from imageproc._processor import Processor
    from imageproc.delivery._webhooks import Webhooks

__all__ = [
    "ENV_PREFIX",
    "ENV_VARS",
    "LOG_LEVELS",
    "Settings",
    "parse_byte_size",
    "parse_whole_number",
    "parse_workers",
    "read_env_file",
]

#: Every environment variable imageproc reads starts with this.
ENV_PREFIX: Final = "IMAGEPROC_"

logger = logging.getLogger("imageproc.config")

_MiB: Final = 1024 * 1024
# IMAGEPROC_* variables read elsewhere (the S3 storage, the install and test scripts): not typos.
_READ_ELSEWHERE: Final = ("IMAGEPROC_S3_", "IMAGEPROC_TEST_", "IMAGEPROC_INSTALL")
_DEFAULT_ENV_FILE: Final = ".env"


# -- declaring a setting ----------------------------------------------------------------------


#: Where a field keeps its :class:`ValueSpec` (attrs metadata).
_SPEC_KEY: Final = "imageproc.setting"


def _setting(default: Any, spec: ValueSpec, **options: Any) -> Any:
    """A field of :class:`Settings`: its default, and how it is read and checked."""
    return attrs.field(default=default, validator=_validated, metadata={_SPEC_KEY: spec}, **options)


def _validated(instance: Settings, attribute: attrs.Attribute[Any], value: Any) -> None:
    try:
        coerced = attribute.metadata[_SPEC_KEY].coerce(value)
    except ValueError as error:
        raise ConfigurationError(f"{attribute.name}: {error}") from None
    if coerced != value:
        raise ConfigurationError(f"{attribute.name}: expected {coerced!r}, got {value!r}")


# -- .env files -------------------------------------------------------------------------------

_ENV_LINE: Final = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*")


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables a ``.env`` file sets: ``NAME=value`` lines, ``#`` comments, blank lines,
    an optional ``export`` prefix, and values optionally in single or double quotes.

    Nothing is interpolated. Raises :class:`~imageproc.ConfigurationError` for a line that is
    none of those, or a file that cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigurationError(f"cannot read {os.fspath(path)}: {reason}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(line)
        if match is None:
            raise ConfigurationError(f"{os.fspath(path)}, line {number}: expected NAME=value")
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()  # an unquoted value may carry a comment
        values[name] = value
    return values


def _warn_about_unknown(variables: Mapping[str, str], where: str) -> None:
    # A misspelt variable would otherwise be ignored without a word, leaving a default in force.
    known = list(ENV_VARS.values())
    for variable in variables:
        if (
            variable.startswith(ENV_PREFIX)
            and variable not in ENV_VARS.values()
            and not variable.startswith(_READ_ELSEWHERE)
        ):
            close = difflib.get_close_matches(variable, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning("%s in %s is not an imageproc setting%s", variable, where, hint)


@attrs.frozen(kw_only=True)
class Settings:
    """Configuration of an imageproc service: backends, HTTP, workers, metrics, logging.

    Build it with :meth:`load` (overrides > environment > ``.env`` > defaults). Each attribute
    is read from the environment variable ``IMAGEPROC_`` + its name in capitals.
    """

    #: Where tasks are recorded: ``sqlite:///path.db``, ``postgresql+psycopg://…``, ``memory://``.
    database_url: str = _setting("sqlite:///imageproc.db", TEXT)
    #: Where originals and outputs are stored: ``file://path``, ``s3://bucket/prefix``, ….
    storage_url: str = _setting("file://imageproc-data", TEXT)
    #: ``owner:key`` pairs separated by commas (a key may be ``sha256:<hex>``); empty: no auth.
    #: Parse with :func:`imageproc.http.parse_api_keys`.
    api_keys: str = _setting("", ValueSpec(parse_text, checks.check_api_keys, (str,)), repr=False)
    #: ``owner:N`` pairs separated by commas: the highest priority each owner's uploads may ask
    #: for over HTTP (higher is refused with 403); ``*:N`` for everyone else. Empty: -1000 to
    #: 1000 for all. Parse with :func:`imageproc.http.parse_max_priorities`.
    max_priority: str = _setting("", ValueSpec(parse_text, checks.check_max_priority, (str,)))
    #: Keys that sign output URLs; the first signs, all verify (rotation). Comma-separated.
    signing_keys: tuple[str, ...] = _setting(
        (), ValueSpec(parse_list, no_check, (tuple, list), convert=texts), repr=False
    )
    #: Accept API keys and signing keys estimated under 128 bits of entropy, with a warning at
    #: start, instead of refusing to start: for tests and development only.
    allow_weak_keys: bool = _setting(False, FLAG)
    #: Missing or unknown API keys one client address may present within any
    #: ``auth_failure_window``; past that it is answered 429 until the oldest of them is that
    #: old. None: no limit. Applies only with ``api_keys``.
    max_auth_failures: int | None = _setting(10, LIMIT)
    #: Seconds (a sliding window) that ``max_auth_failures`` is counted over.
    auth_failure_window: float = _setting(60.0, SECONDS)
    #: Worker threads, ``(min, max)``; from ``"4"`` or ``"2:8"``.
    workers: tuple[int, int] = _setting(
        (2, 2), ValueSpec(parse_workers, check_workers, (tuple, list, int), convert=worker_range)
    )
    #: Largest upload accepted, in bytes (``50MiB``, ``10MB``, ``1048576``).
    max_upload_bytes: int = _setting(
        50 * _MiB, ValueSpec(parse_byte_size, check_positive_int, (int,))
    )
    #: Most tasks queued at once, all owners together, checked as each task is recorded
    #: (uploads and retries beyond it: HTTP 429); None: no bound.
    max_queue_depth: int | None = _setting(None, LIMIT)
    #: Most tasks one owner may have queued at once (HTTP 429 beyond it), so one owner cannot
    #: lock the others out; None: no bound.
    max_queued_per_owner: int | None = _setting(None, LIMIT)
    #: Most uploads one owner (without API keys: one client address) may make in a minute
    #: (HTTP 429 beyond it); None: no bound. Counted in each ``serve`` process.
    max_uploads_per_minute: int | None = _setting(None, LIMIT)
    #: Address and port ``imageproc serve`` listens on.
    host: str = _setting("127.0.0.1", TEXT)
    port: int = _setting(8000, ValueSpec(parse_whole_number, check_port, (int,)))
    #: How long a worker's claim on a task lasts between heartbeats.
    lease_seconds: float = _setting(30.0, SECONDS)
    #: Tries per task before one that keeps failing transiently is dead.
    max_attempts: int = _setting(5, COUNT)
    #: Port on which ``imageproc worker`` serves Prometheus metrics; None: not served.
    metrics_port: int | None = _setting(
        None, ValueSpec(optional(parse_whole_number), check_port, (int, NoneType))
    )
    #: Seconds a signed output URL stays valid.
    url_ttl: float = _setting(3600.0, SECONDS)
    #: An S3-compatible server (MinIO…) for ``s3://`` storage; None: AWS or AWS_ENDPOINT_URL_S3.
    s3_endpoint_url: str | None = _setting(None, OPTIONAL_TEXT)
    #: Named pipelines (name → pipeline text) that uploads may ask for with ``preset``; from a
    #: JSON object such as ``{"avatar": "fill:96x96,webp"}``.
    presets: tuple[tuple[str, str], ...] = _setting(
        (),
        ValueSpec(
            checks.parse_presets, checks.check_presets, (tuple, list, dict), convert=checks.pairs
        ),
    )
    #: Accept only the presets' work, so remote clients cannot ask for arbitrary pipelines.
    presets_only: bool = _setting(False, FLAG)
    #: Most pixels in one upload (all frames of an animation together), checked from the header.
    max_pixels: int = _setting(50_000_000, COUNT)
    #: What an upload that names no pipeline gets: a pipeline's text or a preset's name; None:
    #: one JPEG 800 pixels wide.
    pipeline: str | None = _setting(None, OPTIONAL_TEXT)
    #: The path prefix a reverse proxy serves ``imageproc serve`` under (``/images``), so the
    #: URLs the service writes (status, signed images) carry it; empty: served at the root.
    root_path: str = _setting("", ValueSpec(parse_text, checks.check_root_path, (str,)))
    #: Connections ``imageproc serve`` serves at once; a request on one more is answered 503.
    #: None: no bound.
    max_connections: int | None = _setting(256, LIMIT)
    #: Seconds ``imageproc serve`` keeps an idle connection open between two requests.
    keep_alive_timeout: int = _setting(5, COUNT)
    #: Seconds a client has to send a request's line and headers, from connecting (or from the
    #: first byte of a further request on the connection); then the connection is closed.
    header_timeout: float = _setting(10.0, SECONDS)
    #: Seconds a request body may pause, and the grace period before ``body_min_rate`` applies;
    #: a body slower than that is answered 408 and dropped.
    body_timeout: float = _setting(20.0, SECONDS)
    #: Bytes per second a request body must average once ``body_timeout`` is spent; None: only
    #: pauses are bounded.
    body_min_rate: int | None = _setting(
        8 * 1024, ValueSpec(optional(parse_byte_size), check_positive_int, (int, NoneType))
    )
    #: Uploads one API key may have in progress at once; one more is answered 429. None: no
    #: bound. Applies only with ``api_keys``.
    max_uploads_per_key: int | None = _setting(4, LIMIT)
    #: One of :data:`LOG_LEVELS`.
    log_level: str = _setting("info", ValueSpec(parse_word, checks.check_log_level, (str,)))
    #: Most seconds one task's decode, transforms and encodes may take; past it the task fails
    #: with ``render_timeout``. None (``none``): no limit. Holds only with ``isolation=process``.
    render_timeout: float | None = _setting(
        60.0, ValueSpec(optional(parse_real), check_optional_positive, (int, float, NoneType))
    )
    #: Where a task's image work runs: ``process`` (a render process, which the deadline and
    #: cancelling can stop) or ``thread`` (the worker's thread; trusted images only).
    isolation: str = _setting("process", ValueSpec(parse_word, checks.check_isolation, (str,)))
    #: Take location data (EXIF GPS, XMP ``exif:GPS…``) out of JPEG, PNG and WebP originals
    #: before they are stored; the pixels are not touched.
    strip_location: bool = _setting(False, FLAG)
    #: Seconds an idempotency key (``Idempotency-Key`` on ``POST /upload``) is remembered after
    #: its first request; ``purge`` forgets older ones.
    idempotency_retention: float = _setting(86_400.0, SECONDS)
    #: Secrets that sign webhooks (``whsec_…``, comma-separated; each delivery carries a
    #: signature per secret, for rotation). Empty: no webhooks, and ``callback_url`` is refused.
    webhook_secrets: tuple[str, ...] = _setting(
        (),
        ValueSpec(parse_list, checks.check_webhook_secrets, (tuple, list), convert=texts),
        repr=False,
    )
    #: The callback URL of tasks submitted without one, per owner, as a JSON object
    #: (``{"alice": "https://…", "*": "https://…"}``; ``*`` for everyone else).
    webhook_urls: tuple[tuple[str, str], ...] = _setting(
        (),
        ValueSpec(
            checks.parse_urls, checks.check_webhook_urls, (tuple, list, dict), convert=checks.pairs
        ),
    )
    #: Hosts and networks webhooks may reach though they are not public (``10.0.0.0/8``,
    #: ``hooks.internal``), comma-separated.
    webhook_allow: tuple[str, ...] = _setting(
        (), ValueSpec(parse_list, checks.check_allow, (tuple, list), convert=texts)
    )
    #: Tries of one webhook delivery before it is dead (the default spans about a day).
    webhook_max_attempts: int = _setting(23, COUNT)
    #: Seconds one try of a webhook may take, connecting included.
    webhook_timeout: float = _setting(15.0, SECONDS)
    #: Hosts and networks images may be fetched from (``url`` on ``POST /upload``) though
    #: they are not public (``10.0.0.0/8``, ``images.internal``), comma-separated.
    fetch_allow: tuple[str, ...] = _setting(
        (), ValueSpec(parse_list, checks.check_allow, (tuple, list), convert=texts)
    )
    #: If set, the only hosts images are fetched from (comma-separated exact names).
    fetch_hosts: tuple[str, ...] = _setting(
        (), ValueSpec(parse_list, no_check, (tuple, list), convert=texts)
    )
    #: Seconds a fetch from a URL may take in all, redirects and the body included.
    fetch_timeout: float = _setting(30.0, SECONDS)
    #: Webhooks one process sends at once.
    webhook_concurrency: int = _setting(8, COUNT)

    def __attrs_post_init__(self) -> None:
        from imageproc._signing import (
            ANY_OWNER,
            STRONG_KEY_HINT,
            parse_api_keys,
            parse_max_priorities,
            weak_keys,
        )

        owners = parse_api_keys(self.api_keys)
        # A key that can be guessed is no key: refuse it at startup, naming the setting. Those
        # who allow weak keys are warned by whatever uses them (create_app, at start).
        if not self.allow_weak_keys:
            for setting, weak in (
                ("api_keys", weak_keys(api_keys=owners)),
                ("signing_keys", weak_keys(signing_keys=self.signing_keys)),
            ):
                if weak:
                    raise ConfigurationError(
                        f"{ENV_VARS[setting]}: too weak to use: {', '.join(weak)}"
                        f" ({STRONG_KEY_HINT}); {ENV_VARS['allow_weak_keys']}=true allows weak"
                        " keys in tests and development"
                    )
        if self.webhook_urls and not self.webhook_secrets:
            raise ConfigurationError(
                f"{ENV_VARS['webhook_urls']} needs {ENV_VARS['webhook_secrets']}: webhooks are"
                " always signed"
            )
        # An owner misspelt here would keep no limit at all, without a word: name it at startup.
        for owner in parse_max_priorities(self.max_priority):
            if owner != ANY_OWNER and owner not in owners:
                raise ConfigurationError(
                    f"{ENV_VARS['max_priority']}: {owner!r} is not an owner in"
                    f" {ENV_VARS['api_keys']} (use * for everyone else)"
                )
        # A default pipeline that names no preset must be a pipeline: say so at startup, naming
        # the setting, rather than when the processor is built.
        if self.pipeline is not None and self.pipeline not in dict(self.presets):
            from imageproc.errors import InvalidPipeline
            from imageproc.pipeline._pipeline import Pipeline

            try:
                Pipeline.parse(self.pipeline)
            except InvalidPipeline as error:
                raise ConfigurationError(
                    f"{ENV_VARS['pipeline']}: neither a preset nor a pipeline: {error.message}"
                ) from None

    @classmethod
    def load(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = _DEFAULT_ENV_FILE,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``overrides``, then ``env`` (default: ``os.environ``), then ``env_file``,
        then the defaults.

        An override of None counts as not given (so unset command-line flags can be passed
        straight through); overrides may be text (parsed like the environment) or values. A
        missing ``.env`` at the default path is fine; any other ``env_file`` must exist.
        ``env_file=None`` reads no file. Raises :class:`~imageproc.ConfigurationError`.
        """
        unknown = sorted(set(overrides) - set(_SPECS))
        if unknown:
            raise ConfigurationError(f"unknown setting {unknown[0]!r}")
        environ = os.environ if env is None else env
        file_values: dict[str, str] = {}
        file_label = ""
        if env_file is not None:
            path = Path(env_file)
            if path.exists() or os.fspath(env_file) != _DEFAULT_ENV_FILE:
                file_values = read_env_file(path)
                file_label = os.fspath(env_file)
        _warn_about_unknown(environ, "the environment")
        _warn_about_unknown(file_values, file_label)
        values: dict[str, Any] = {}
        for name, variable in ENV_VARS.items():
            if overrides.get(name) is not None:
                raw, label = overrides[name], f"--{name.replace('_', '-')}"
            elif variable in environ:
                raw, label = environ[variable], variable
            elif variable in file_values:
                raw, label = file_values[variable], f"{variable} (in {file_label})"
            else:
                continue
            try:
                values[name] = _SPECS[name].coerce(raw)
            except ValueError as error:
                raise ConfigurationError(f"{label}: {error}") from None
        return cls(**values)

    def processor(self, **options: Any) -> Processor:
        """A :class:`~imageproc.Processor` on these settings' database and storage.

        ``options`` go to :meth:`Processor.from_urls` (``migrate=False``, ``events=…``, …) and
        win over the settings (``lease_seconds``, ``render_timeout``, ``isolation``,
        ``max_attempts`` or a whole ``retry``
        policy, ``presets``, ``presets_only``, and ``max_upload_bytes`` and ``max_pixels`` as
        the image limits).
        """
        from imageproc._processor import Processor
        from imageproc._protocols import QueueLimits
        from imageproc._retrying import RetryPolicy
        from imageproc.engine._open import ImageLimits

        options.setdefault("lease_seconds", self.lease_seconds)
        options.setdefault("render_timeout", self.render_timeout)
        options.setdefault("isolation", self.isolation)
        options.setdefault("strip_location", self.strip_location)
        options.setdefault("idempotency_retention", timedelta(seconds=self.idempotency_retention))
        options.setdefault(
            "queue_limits",
            QueueLimits(
                max_queued=self.max_queue_depth, max_queued_per_owner=self.max_queued_per_owner
            ),
        )
        if "retry" not in options and "max_attempts" not in options:
            options["retry"] = RetryPolicy(max_attempts=self.max_attempts)
        options.setdefault(
            "image_limits", ImageLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels)
        )
        options.setdefault("presets", dict(self.presets))
        options.setdefault("presets_only", self.presets_only)
        if self.pipeline is not None:
            options.setdefault("pipeline", self.pipeline)
        options.setdefault("storage_options", self.storage_options())
        if self.webhook_secrets:
            options.setdefault("webhooks", self.webhooks())
        options.setdefault("fetching", self.fetching())
        return Processor.from_urls(self.database_url, self.storage_url, **options)

    def fetching(self) -> Fetching:
        """How these settings fetch images from URLs (:class:`~imageproc.Fetching`)."""
        from imageproc._fetching import Fetching

        return Fetching(
            allow=self.fetch_allow,
            hosts=self.fetch_hosts,
            timeout=self.fetch_timeout,
            connect_timeout=min(5.0, self.fetch_timeout),
        )

    def webhooks(self) -> Webhooks | None:
        """The :class:`~imageproc.Webhooks` these settings describe; None without secrets."""
        from imageproc.delivery._webhooks import DEFAULT_SCHEDULE, Webhooks

        if not self.webhook_secrets:
            return None
        return Webhooks(
            secrets=self.webhook_secrets,
            default_urls=dict(self.webhook_urls),
            allow=self.webhook_allow,
            schedule=attrs.evolve(DEFAULT_SCHEDULE, max_attempts=self.webhook_max_attempts),
            timeout=self.webhook_timeout,
            connect_timeout=min(5.0, self.webhook_timeout),
            concurrency=self.webhook_concurrency,
        )

    def storage_options(self) -> dict[str, Any]:
        """The fsspec options these settings imply for the storage URL (an S3 endpoint, so a
        ``.env`` file can name one as well as the environment can)."""
        if self.s3_endpoint_url and self.storage_url.startswith(("s3://", "s3a://")):
            return {"endpoint_url": self.s3_endpoint_url}
        return {}


#: Each setting's :class:`ValueSpec`, by name, as its field declares it.
_SPECS: Final[dict[str, ValueSpec]] = {
    field.name: field.metadata[_SPEC_KEY] for field in attrs.fields(Settings)
}
#: Setting name → the environment variable it is read from.
ENV_VARS: Final[dict[str, str]] = {name: ENV_PREFIX + name.upper() for name in _SPECS}
