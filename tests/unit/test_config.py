"""Settings: precedence (overrides > environment > .env > defaults), parsing, clear errors."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc import ConfigurationError, InvalidImage, InvalidPipeline
from imageproc.config import (
    ENV_VARS,
    Settings,
    parse_byte_size,
    parse_whole_number,
    parse_workers,
    read_env_file,
)
from imageproc.testing import sample_image
from tests.support.strategies import foreign_digits, foreign_numbers

REPO = Path(__file__).resolve().parents[2]
KEY_HASH = "sha256:" + "ab" * 32
# Strong enough to be accepted (22+ mixed-case letters and digits: over 128 bits).
KEY_1, KEY_2 = "key-1-0123456789-AbCdEfGhIj", "key-2-0123456789-KlMnOpQrSt"


def load(env: dict[str, str] | None = None, **overrides: object) -> Settings:
    return Settings.load(env=env or {}, env_file=None, **overrides)


# -- precedence -------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load()
    assert settings == Settings()
    assert settings.database_url == "sqlite:///imageproc.db"
    assert settings.storage_url == "file://imageproc-data"
    assert settings.workers == (2, 2)
    assert settings.max_upload_bytes == 50 * 1024 * 1024
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert (settings.max_queue_depth, settings.metrics_port) == (None, None)
    assert (settings.lease_seconds, settings.max_attempts) == (30.0, 5)
    assert (settings.api_keys, settings.signing_keys, settings.log_level) == ("", (), "info")
    assert settings.allow_weak_keys is False
    assert (settings.max_auth_failures, settings.auth_failure_window) == (10, 60.0)


def test_overrides_beat_environment_beat_env_file_beat_defaults(tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("IMAGEPROC_PORT=7001\nIMAGEPROC_HOST=file-host\nIMAGEPROC_MAX_ATTEMPTS=3\n")
    env = {"IMAGEPROC_PORT": "7002", "IMAGEPROC_HOST": "env-host"}
    settings = Settings.load(env=env, env_file=env_file, port=7003)
    assert settings.port == 7003  # override
    assert settings.host == "env-host"  # environment over .env
    assert settings.max_attempts == 3  # .env over the default
    assert settings.lease_seconds == 30.0  # default


def test_none_overrides_count_as_not_given() -> None:
    # So unset command-line flags can be passed straight through.
    assert load({"IMAGEPROC_PORT": "9000"}, port=None).port == 9000


def test_the_default_env_file_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.load(env={}) == Settings()  # no .env: fine
    (tmp_path / ".env").write_text("IMAGEPROC_WORKERS=3:6\n")
    assert Settings.load(env={}).workers == (3, 6)
    assert Settings.load(env={}, env_file=None).workers == (2, 2)


def test_the_environment_is_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEPROC_LOG_LEVEL", "DEBUG")
    assert Settings.load(env_file=None).log_level == "debug"


def test_an_empty_value_clears_an_optional_setting_from_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("IMAGEPROC_METRICS_PORT=9100\nIMAGEPROC_MAX_QUEUE_DEPTH=100\n")
    settings = Settings.load(env={"IMAGEPROC_METRICS_PORT": ""}, env_file=env_file)
    assert (settings.metrics_port, settings.max_queue_depth) == (None, 100)


def test_an_s3_endpoint_in_env_file_reaches_the_storage(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "IMAGEPROC_STORAGE_URL=s3://bucket/images\n"
        "IMAGEPROC_S3_ENDPOINT_URL=http://127.0.0.1:9000\n"
    )
    settings = Settings.load(env={}, env_file=env_file)
    assert settings.storage_options() == {"endpoint_url": "http://127.0.0.1:9000"}
    local = Settings.load(env={"IMAGEPROC_STORAGE_URL": "file://x"}, env_file=env_file)
    assert local.storage_options() == {}


def test_env_example_documents_every_variable_with_its_default() -> None:
    example = REPO / ".env.example"
    assert set(read_env_file(example)) == set(ENV_VARS.values())
    assert Settings.load(env={}, env_file=example) == Settings()


# -- parsing every variable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "text", "attribute", "expected"),
    [
        (
            "IMAGEPROC_DATABASE_URL",
            " postgresql+psycopg://db/x ",
            "database_url",
            "postgresql+psycopg://db/x",
        ),
        ("IMAGEPROC_STORAGE_URL", "s3://bucket/prefix", "storage_url", "s3://bucket/prefix"),
        (
            "IMAGEPROC_API_KEYS",
            f"alice:{KEY_1}, bob:{KEY_HASH}",
            "api_keys",
            f"alice:{KEY_1}, bob:{KEY_HASH}",
        ),
        ("IMAGEPROC_SIGNING_KEYS", f"{KEY_1}, {KEY_2},", "signing_keys", (KEY_1, KEY_2)),
        ("IMAGEPROC_ALLOW_WEAK_KEYS", "TRUE", "allow_weak_keys", True),
        ("IMAGEPROC_MAX_AUTH_FAILURES", "5", "max_auth_failures", 5),
        ("IMAGEPROC_MAX_AUTH_FAILURES", "", "max_auth_failures", None),
        ("IMAGEPROC_AUTH_FAILURE_WINDOW", "2.5", "auth_failure_window", 2.5),
        ("IMAGEPROC_WORKERS", "4", "workers", (4, 4)),
        ("IMAGEPROC_WORKERS", " 2:8 ", "workers", (2, 8)),
        ("IMAGEPROC_MAX_UPLOAD_BYTES", "1048576", "max_upload_bytes", 1048576),
        ("IMAGEPROC_MAX_UPLOAD_BYTES", "10MB", "max_upload_bytes", 10_000_000),
        ("IMAGEPROC_MAX_UPLOAD_BYTES", "10mib", "max_upload_bytes", 10 * 1024 * 1024),
        ("IMAGEPROC_MAX_QUEUE_DEPTH", "500", "max_queue_depth", 500),
        ("IMAGEPROC_MAX_QUEUE_DEPTH", "none", "max_queue_depth", None),
        ("IMAGEPROC_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("IMAGEPROC_PORT", "8080", "port", 8080),
        ("IMAGEPROC_LEASE_SECONDS", "2.5", "lease_seconds", 2.5),
        ("IMAGEPROC_MAX_ATTEMPTS", "1", "max_attempts", 1),
        ("IMAGEPROC_METRICS_PORT", "9100", "metrics_port", 9100),
        ("IMAGEPROC_URL_TTL", "60", "url_ttl", 60.0),
        ("IMAGEPROC_LOG_LEVEL", "Warning", "log_level", "warning"),
        (
            "IMAGEPROC_PRESETS",
            '{"avatar": "fill:96x96,webp", "pair": "a=png;b=fit:9x9"}',
            "presets",
            (("avatar", "fill:96x96,webp"), ("pair", "a=png;b=fit:9x9")),
        ),
        ("IMAGEPROC_PRESETS", "", "presets", ()),
        ("IMAGEPROC_PRESETS_ONLY", "True", "presets_only", True),
        ("IMAGEPROC_PRESETS_ONLY", "off", "presets_only", False),
        ("IMAGEPROC_MAX_PIXELS", "1000000", "max_pixels", 1_000_000),
        ("IMAGEPROC_PIPELINE", " fit:10x10,png ", "pipeline", "fit:10x10,png"),
        ("IMAGEPROC_PIPELINE", "", "pipeline", None),
        ("IMAGEPROC_ROOT_PATH", "/images", "root_path", "/images"),
        ("IMAGEPROC_MAX_CONNECTIONS", "64", "max_connections", 64),
        ("IMAGEPROC_MAX_CONNECTIONS", "off", "max_connections", None),
        ("IMAGEPROC_KEEP_ALIVE_TIMEOUT", "30", "keep_alive_timeout", 30),
        ("IMAGEPROC_HEADER_TIMEOUT", "2.5", "header_timeout", 2.5),
        ("IMAGEPROC_BODY_TIMEOUT", "60", "body_timeout", 60.0),
        ("IMAGEPROC_BODY_MIN_RATE", "16K", "body_min_rate", 16 * 1024),
        ("IMAGEPROC_BODY_MIN_RATE", "", "body_min_rate", None),
        ("IMAGEPROC_MAX_UPLOADS_PER_KEY", "2", "max_uploads_per_key", 2),
        ("IMAGEPROC_MAX_UPLOADS_PER_KEY", "none", "max_uploads_per_key", None),
    ],
)
def test_each_variable_is_parsed(
    variable: str, text: str, attribute: str, expected: object
) -> None:
    assert getattr(load({variable: text}), attribute) == expected


def test_a_variable_is_the_setting_name_in_capitals() -> None:
    # ENV_VARS is derived from the fields; what users rely on is the spelling.
    assert ENV_VARS["database_url"] == "IMAGEPROC_DATABASE_URL"
    assert ENV_VARS["max_uploads_per_minute"] == "IMAGEPROC_MAX_UPLOADS_PER_MINUTE"
    assert len(ENV_VARS) == len(attrs.fields(Settings))


def test_overrides_may_be_python_values() -> None:
    settings = load(workers=3, signing_keys=[KEY_1], lease_seconds=1, max_upload_bytes=10)
    assert settings.workers == (3, 3)
    assert settings.signing_keys == (KEY_1,)
    assert settings.lease_seconds == 1.0
    assert load(workers=(1, 4)).workers == (1, 4)


@given(st.integers(1, 10_000), st.integers(0, 10_000))
def test_workers_min_max_round_trips(low: int, extra: int) -> None:
    assert parse_workers(f"{low}:{low + extra}") == (low, low + extra)
    assert parse_workers(str(low)) == (low, low)


@given(st.integers(-10_000, 10_000), st.integers(-10_000, 10_000))
def test_workers_out_of_order_or_below_one_is_refused(low: int, high: int) -> None:
    if 1 <= low <= high:
        assert parse_workers(f"{low}:{high}") == (low, high)
    else:
        with pytest.raises(ValueError, match="MIN"):
            parse_workers(f"{low}:{high}")


@given(st.text(max_size=20))
def test_workers_parser_only_ever_raises_value_error(text: str) -> None:
    try:
        low, high = parse_workers(text)
    except ValueError:
        return
    assert 1 <= low <= high


@given(
    st.integers(0, 10**6),
    st.sampled_from(
        [
            ("", 1),
            ("b", 1),
            ("K", 1024),
            ("kB", 1000),
            ("KiB", 1024),
            ("M", 1024**2),
            ("MB", 1000**2),
            ("MiB", 1024**2),
            ("g", 1024**3),
            ("GB", 1000**3),
            ("GiB", 1024**3),
        ]
    ),
    st.sampled_from(["", " "]),
)
def test_byte_sizes(number: int, unit: tuple[str, int], space: str) -> None:
    suffix, factor = unit
    assert parse_byte_size(f"{number}{space}{suffix}") == number * factor


@given(st.text(max_size=12))
def test_byte_size_parser_only_ever_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert parse_byte_size(text) >= 0


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"IMAGEPROC_WORKERS": "many"},
            "IMAGEPROC_WORKERS: expected a count N or MIN:MAX, got 'many'",
        ),
        ({"IMAGEPROC_WORKERS": "8:2"}, "IMAGEPROC_WORKERS: need 1 <= MIN <= MAX, got 8:2"),
        ({"IMAGEPROC_WORKERS": "0"}, "IMAGEPROC_WORKERS: need 1 <= MIN <= MAX"),
        (
            {"IMAGEPROC_MAX_UPLOAD_BYTES": "10 parsecs"},
            "IMAGEPROC_MAX_UPLOAD_BYTES: expected a byte size",
        ),
        ({"IMAGEPROC_MAX_UPLOAD_BYTES": "0"}, "IMAGEPROC_MAX_UPLOAD_BYTES: must be at least 1"),
        ({"IMAGEPROC_MAX_QUEUE_DEPTH": "-1"}, "IMAGEPROC_MAX_QUEUE_DEPTH: must be at least 1"),
        ({"IMAGEPROC_PORT": "http"}, "IMAGEPROC_PORT: expected a whole number, got 'http'"),
        ({"IMAGEPROC_PORT": "70000"}, "IMAGEPROC_PORT: must be a port number from 1 to 65535"),
        ({"IMAGEPROC_METRICS_PORT": "0"}, "IMAGEPROC_METRICS_PORT: must be a port number"),
        ({"IMAGEPROC_LEASE_SECONDS": "0"}, "IMAGEPROC_LEASE_SECONDS: must be positive"),
        ({"IMAGEPROC_LEASE_SECONDS": "nan"}, "IMAGEPROC_LEASE_SECONDS: expected a finite number"),
        ({"IMAGEPROC_MAX_ATTEMPTS": "1.5"}, "IMAGEPROC_MAX_ATTEMPTS: expected a whole number"),
        ({"IMAGEPROC_LOG_LEVEL": "loud"}, "IMAGEPROC_LOG_LEVEL: must be one of debug, info"),
        ({"IMAGEPROC_DATABASE_URL": " "}, "IMAGEPROC_DATABASE_URL: must not be empty"),
        (
            {"IMAGEPROC_API_KEYS": "alice"},
            "IMAGEPROC_API_KEYS: API key pair 1 must be written owner:key",
        ),
        ({"IMAGEPROC_PRESETS": "avatar=png"}, "IMAGEPROC_PRESETS: expected a JSON object"),
        ({"IMAGEPROC_PRESETS": "[1]"}, "IMAGEPROC_PRESETS: expected a JSON object"),
        (
            {"IMAGEPROC_PRESETS": '{"avatar": "fitt:9x9"}'},
            "IMAGEPROC_PRESETS: preset 'avatar': unknown operation, format or option 'fitt'",
        ),
        ({"IMAGEPROC_PRESETS": '{"avatar": 3}'}, "IMAGEPROC_PRESETS: preset 'avatar' must be"),
        ({"IMAGEPROC_PRESETS_ONLY": "maybe"}, "IMAGEPROC_PRESETS_ONLY: expected true or false"),
        ({"IMAGEPROC_MAX_PIXELS": "0"}, "IMAGEPROC_MAX_PIXELS: must be at least 1"),
        ({"IMAGEPROC_MAX_CONNECTIONS": "0"}, "IMAGEPROC_MAX_CONNECTIONS: must be at least 1"),
        ({"IMAGEPROC_KEEP_ALIVE_TIMEOUT": "1.5"}, "IMAGEPROC_KEEP_ALIVE_TIMEOUT: expected a whole"),
        ({"IMAGEPROC_HEADER_TIMEOUT": "0"}, "IMAGEPROC_HEADER_TIMEOUT: must be positive"),
        ({"IMAGEPROC_BODY_TIMEOUT": "-1"}, "IMAGEPROC_BODY_TIMEOUT: must be positive"),
        ({"IMAGEPROC_BODY_MIN_RATE": "0"}, "IMAGEPROC_BODY_MIN_RATE: must be at least 1"),
        ({"IMAGEPROC_MAX_UPLOADS_PER_KEY": "0"}, "IMAGEPROC_MAX_UPLOADS_PER_KEY: must be at"),
        ({"IMAGEPROC_MAX_AUTH_FAILURES": "0"}, "IMAGEPROC_MAX_AUTH_FAILURES: must be at least 1"),
        ({"IMAGEPROC_AUTH_FAILURE_WINDOW": "0"}, "IMAGEPROC_AUTH_FAILURE_WINDOW: must be positive"),
        ({"IMAGEPROC_ALLOW_WEAK_KEYS": "maybe"}, "IMAGEPROC_ALLOW_WEAK_KEYS: expected true or"),
    ],
)
def test_bad_values_raise_a_one_line_error_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load(env)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_an_api_key_is_never_echoed_in_an_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load({"IMAGEPROC_API_KEYS": "alice:ok,topsecretkey"})
    assert "topsecretkey" not in str(raised.value)


def test_errors_name_the_flag_or_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^--port: must be a port number"):
        load(port="0")
    with pytest.raises(ConfigurationError, match=r"^--workers: need 1 <= MIN <= MAX"):
        load(workers=(3, 1))
    env_file = tmp_path / "bad.env"
    env_file.write_text("IMAGEPROC_PORT=x\n")
    with pytest.raises(ConfigurationError, match=rf"^IMAGEPROC_PORT \(in {env_file}\): expected"):
        Settings.load(env={}, env_file=env_file)


def test_a_named_env_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^cannot read .*missing\.env"):
        Settings.load(env={}, env_file=tmp_path / "missing.env")


def test_unknown_overrides_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting 'prot'"):
        load(prot=80)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigurationError, match=r"^port: must be a port number"):
        Settings(port=0)
    with pytest.raises(ConfigurationError, match=r"^workers"):
        Settings(workers="2:4")  # type: ignore[arg-type]


def test_env_file_syntax(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment\n"
        "\n"
        "export IMAGEPROC_HOST=0.0.0.0\n"
        "IMAGEPROC_DATABASE_URL = 'sqlite:///a b.db'\n"
        'IMAGEPROC_STORAGE_URL="file://data#1"\n'
        "IMAGEPROC_LOG_LEVEL=debug # trailing comment\n"
        "OTHER_TOOL=ignored\n"
    )
    values = read_env_file(env_file)
    assert values["IMAGEPROC_HOST"] == "0.0.0.0"
    assert values["IMAGEPROC_DATABASE_URL"] == "sqlite:///a b.db"
    assert values["IMAGEPROC_STORAGE_URL"] == "file://data#1"
    settings = Settings.load(env={}, env_file=env_file)
    assert (settings.host, settings.log_level) == ("0.0.0.0", "debug")
    env_file.write_text("IMAGEPROC_PORT=1\nthis is not a setting\n")
    with pytest.raises(ConfigurationError, match=r"\.env, line 2: expected NAME=value"):
        read_env_file(env_file)


def test_processor_uses_the_settings(tmp_path: Path) -> None:
    settings = load(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        storage_url=f"file://{tmp_path / 'data'}",
        lease_seconds=7,
        max_attempts=2,
        max_upload_bytes="1K",
    )
    with settings.processor() as processor:
        assert (processor.lease_seconds, processor.max_attempts) == (7.0, 2)
        assert processor.image_limits.max_bytes == 1024
    with settings.processor(max_attempts=9, migrate=False) as processor:
        assert processor.max_attempts == 9


def test_the_idempotency_retention_reaches_the_processor() -> None:
    settings = load(
        {
            "IMAGEPROC_DATABASE_URL": "memory://",
            "IMAGEPROC_STORAGE_URL": "memory://",
            "IMAGEPROC_IDEMPOTENCY_RETENTION": "90",
        }
    )
    with settings.processor() as processor:
        assert processor._submission.idempotency_retention == timedelta(seconds=90)
    with load({}).processor() as processor:
        assert processor._submission.idempotency_retention == timedelta(hours=24)


def test_presets_and_pixel_limit_reach_the_processor(tmp_path: Path) -> None:
    settings = load(
        {
            "IMAGEPROC_DATABASE_URL": "memory://",
            "IMAGEPROC_STORAGE_URL": "memory://",
            "IMAGEPROC_PRESETS": '{"avatar": "fill:96x96,webp"}',
            "IMAGEPROC_PRESETS_ONLY": "true",
            "IMAGEPROC_MAX_PIXELS": "10000",
        }
    )
    with settings.processor() as processor:
        assert str(processor.submit(sample_image(100, 100), "avatar").pipeline) == (
            "default=fill:96x96,webp"
        )
        with pytest.raises(InvalidPipeline, match="only presets are accepted here"):
            processor.submit(sample_image(100, 100), "fit:10x10")
        with pytest.raises(InvalidImage, match="pixels"):
            processor.submit(sample_image(101, 100), "avatar")


def test_a_misspelt_variable_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("IMAGEPROC_PROT=9000\nIMAGEPROC_S3_ENDPOINT_URL=http://minio\n")
    settings = Settings.load(env={"IMAGEPROC_WORKER": "4", "OTHER": "x"}, env_file=env_file)
    assert settings == Settings(s3_endpoint_url="http://minio")
    assert (
        "IMAGEPROC_WORKER in the environment is not an imageproc setting;"
        " did you mean IMAGEPROC_WORKERS?" in caplog.text
    )
    assert (
        f"IMAGEPROC_PROT in {env_file} is not an imageproc setting; did you mean IMAGEPROC_PORT?"
        in caplog.text
    )
    assert "S3_ENDPOINT" not in caplog.text  # a setting, not a typo


# -- numbers: ASCII digits only -----------------------------------------------------------------


@given(st.integers(-(10**18) + 1, 10**18 - 1), st.sampled_from(["{}", " {} "]))
def test_whole_numbers_in_ascii_digits_are_read(number: int, spelling: str) -> None:
    assert parse_whole_number(spelling.format(number)) == number


@given(foreign_numbers())
def test_whole_numbers_in_other_digits_or_with_underscores_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="only the ASCII digits 0-9"):
        parse_whole_number(text)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IMAGEPROC_PORT", foreign_digits("8000")),
        ("IMAGEPROC_PORT", "8_000"),
        ("IMAGEPROC_MAX_ATTEMPTS", foreign_digits("5", 0x0660)),
        ("IMAGEPROC_MAX_PIXELS", "50_000_000"),
        ("IMAGEPROC_MAX_QUEUE_DEPTH", foreign_digits("100", 0x0966)),
        ("IMAGEPROC_METRICS_PORT", foreign_digits("9100")),
        ("IMAGEPROC_WORKERS", foreign_digits("4")),
        ("IMAGEPROC_WORKERS", "2:" + foreign_digits("8", 0x0660)),
        ("IMAGEPROC_MAX_UPLOAD_BYTES", foreign_digits("50") + "MiB"),
        ("IMAGEPROC_LEASE_SECONDS", foreign_digits("30")),
        ("IMAGEPROC_URL_TTL", "3_600"),
        ("IMAGEPROC_URL_TTL", foreign_digits("0.5", 0x0660)),
    ],
)
def test_numbers_in_settings_are_ascii_digits_only(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        load({variable: value})


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("IMAGEPROC_URL_TTL", "0.5", "url_ttl", 0.5),
        ("IMAGEPROC_URL_TTL", "1e3", "url_ttl", 1000.0),
        ("IMAGEPROC_LEASE_SECONDS", " 30 ", "lease_seconds", 30.0),
        ("IMAGEPROC_PORT", "+8080", "port", 8080),
    ],
)
def test_ascii_numbers_in_settings_still_read(
    variable: str, value: str, attribute: str, expected: object
) -> None:
    assert getattr(load({variable: value}), attribute) == expected


def test_max_priority_is_read_and_checked_against_the_owners() -> None:
    settings = load(
        {
            "IMAGEPROC_API_KEYS": f"alice:{KEY_1},bob:{KEY_2}",
            "IMAGEPROC_MAX_PRIORITY": "alice:9,*:0",
        }
    )
    assert settings.max_priority == "alice:9,*:0"
    assert load({"IMAGEPROC_MAX_PRIORITY": "*:0"}).max_priority == "*:0"
    with pytest.raises(ConfigurationError, match="IMAGEPROC_MAX_PRIORITY: 'carol' is not an owner"):
        load({"IMAGEPROC_API_KEYS": f"alice:{KEY_1}", "IMAGEPROC_MAX_PRIORITY": "carol:9"})
    with pytest.raises(ConfigurationError, match="IMAGEPROC_MAX_PRIORITY: priority pair 1"):
        load({"IMAGEPROC_MAX_PRIORITY": "alice:" + foreign_digits("9")})


# -- key strength -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"IMAGEPROC_API_KEYS": f"alice:{KEY_1},bob:x"},
            "IMAGEPROC_API_KEYS: too weak to use: the API key of 'bob' (at least 128 bits",
        ),
        (
            {"IMAGEPROC_SIGNING_KEYS": f"{KEY_1},short-key"},
            "IMAGEPROC_SIGNING_KEYS: too weak to use: signing key 2 (at least 128 bits",
        ),
    ],
)
def test_weak_keys_are_refused_naming_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load(env)
    assert str(raised.value).startswith(message)
    assert "IMAGEPROC_ALLOW_WEAK_KEYS=true" in str(raised.value)
    assert "short-key" not in str(raised.value)
    # The same keys given as Python values, too.
    with pytest.raises(ConfigurationError, match="too weak"):
        Settings(signing_keys=("k",))


def test_weak_keys_are_accepted_when_allowed_and_digests_always() -> None:
    allowed = load(
        {"IMAGEPROC_API_KEYS": "alice:x", "IMAGEPROC_SIGNING_KEYS": "s"},
        allow_weak_keys="true",
    )
    assert (allowed.allow_weak_keys, allowed.signing_keys) == (True, ("s",))
    # A digest hides its key, which cannot be judged: accepted.
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert load({"IMAGEPROC_API_KEYS": f"alice:{digest}"}).api_keys == f"alice:{digest}"
    assert load({"IMAGEPROC_ALLOW_WEAK_KEYS": "yes"}).allow_weak_keys is True


def test_webhook_settings_make_the_processors_webhooks(tmp_path: Path) -> None:
    from imageproc import Webhooks

    secret = Webhooks.new_secret()
    env = {
        "IMAGEPROC_WEBHOOK_SECRETS": f"{secret}, {Webhooks.new_secret()}",
        "IMAGEPROC_WEBHOOK_URLS": '{"*": "https://hooks.example.com/all", "alice": "https://a.example/h"}',
        "IMAGEPROC_WEBHOOK_ALLOW": "10.0.0.0/8, hooks.internal",
        "IMAGEPROC_WEBHOOK_MAX_ATTEMPTS": "3",
        "IMAGEPROC_WEBHOOK_TIMEOUT": "4",
        "IMAGEPROC_DATABASE_URL": "memory://",
        "IMAGEPROC_STORAGE_URL": "memory://",
    }
    settings = Settings.load(env=env, env_file=None)
    with settings.processor() as processor:
        hooks = processor.webhooks
        assert hooks is not None
        assert hooks.secrets[0] == secret
        assert len(hooks.secrets) == 2
        assert hooks.url_for("alice") == "https://a.example/h"
        assert hooks.url_for("bob") == hooks.url_for(None) == "https://hooks.example.com/all"
        assert hooks.allow.allow == ("10.0.0.0/8", "hooks.internal")
        assert (hooks.schedule.max_attempts, hooks.timeout) == (3, 4.0)
    assert Settings.load(env={}, env_file=None).webhooks() is None
    assert secret not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGEPROC_WEBHOOK_SECRETS": "whsec_c2hvcnQ="}, "at least 24 random bytes"),
        ({"IMAGEPROC_WEBHOOK_SECRETS": "not base64!"}, "whsec_<base64>"),
        (
            {"IMAGEPROC_WEBHOOK_URLS": '{"*": "https://h.example/"}'},
            "needs IMAGEPROC_WEBHOOK_SECRETS",
        ),
        ({"IMAGEPROC_WEBHOOK_URLS": '{"*": "ftp://h.example/"}'}, "http:// or https://"),
        ({"IMAGEPROC_WEBHOOK_ALLOW": "10.0.0.0/33"}, "10.0.0.0/33"),
    ],
)
def test_bad_webhook_settings_are_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        Settings.load(env=env, env_file=None)
    assert "IMAGEPROC_WEBHOOK" in str(raised.value)
