"""The commands on the task records: ``status`` and ``tasks`` (which print tasks as
:func:`imageproc._taskjson.task_json` writes them for an operator: without URLs, with the real
error messages, the owner and when the task is next due), ``purge`` and ``migrate``; and the
check that the database is one they can use."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from imageproc._task import METADATA_KEY, MetadataValue, TaskStatus
from imageproc._taskjson import task_json
from imageproc.cli._durations import say_duration
from imageproc.cli._reporting import EXIT_OK, UsageError, safe_url
from imageproc.config import Settings
from imageproc.errors import ConfigurationError

if TYPE_CHECKING:
    from imageproc.backends.sql._backend import SQLBackend

__all__ = ["migrate", "purge", "status", "tasks"]


def status(args: argparse.Namespace, settings: Settings) -> int:
    # Only the task records are needed: no storage (which would create its folder) and no
    # migration (a read-only command must not change the schema).
    with records(settings, "status") as backend:
        task = backend.get(args.task_id)
    print(json.dumps(task_json(task, operator=True), indent=2))
    return EXIT_OK


@contextmanager
def records(settings: Settings, command: str) -> Iterator[SQLBackend]:
    """The task records of an existing, migrated database, for a command that only reads."""
    backend = _sql_backend(settings, command)
    try:
        if backend.schema_revision() is None:
            raise ConfigurationError(
                f"no imageproc tables in {safe_url(settings.database_url)}:"
                " run `imageproc migrate` first"
            )
        yield backend
    finally:
        backend.close()


def _sql_backend(settings: Settings, command: str) -> SQLBackend:
    from imageproc.backends.sql._backend import SQLBackend

    _check_database(settings, command)
    return SQLBackend(settings.database_url)


def _check_database(settings: Settings, command: str) -> None:
    """Refuse, with a usage error, a database ``command`` cannot use: not SQL, or (but for
    ``migrate``) a SQLite file that does not exist yet."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from imageproc.backends._urls import SQL_DIALECTS, database_scheme

    _, dialect = database_scheme(settings.database_url)
    if dialect not in SQL_DIALECTS:
        raise ConfigurationError(
            f"{command} needs a SQLite or PostgreSQL database URL, got a {dialect!r} one"
        )
    try:
        database = make_url(settings.database_url).database
    except ArgumentError:
        raise ConfigurationError(f"{command}: malformed database URL") from None
    # SQLite would create an empty file, and then report missing tables.
    is_file = dialect == "sqlite" and database not in (None, "", ":memory:")
    if command != "migrate" and is_file and not Path(str(database)).is_file():
        raise ConfigurationError(f"no database at {database}: run `imageproc migrate` first")


def purge(args: argparse.Namespace, settings: Settings) -> int:
    # A maintenance command: it must not change the schema, and finds no tasks without one.
    _check_database(settings, "purge")
    with settings.processor(migrate=False) as processor:
        deleted = processor.purge(args.older_than, orphans_older_than=None)
        print(f"purged {deleted} finished task(s) older than {say_duration(args.older_than)}")
        # Separately, to say how many: purge() reports tasks only.
        removed = processor.purge_orphans(args.orphans_older_than)
    grace = say_duration(args.orphans_older_than)
    print(f"removed {removed} orphaned original(s) older than {grace}")
    return EXIT_OK


def _metadata_filter(texts: list[str], values: list[str]) -> dict[str, MetadataValue]:
    """``--metadata KEY=TEXT`` (a string) and ``--metadata-json KEY=JSON`` (a number, true,
    false or null) as one filter: two flags, so ``user=42`` is never a guess between the two."""
    wanted: dict[str, MetadataValue] = {}
    for flag, items in (("--metadata", texts), ("--metadata-json", values)):
        for item in items:
            key, separator, value = item.partition("=")
            if not separator or not METADATA_KEY.fullmatch(key):
                raise UsageError(f"{flag} takes KEY=VALUE with a metadata key, got {item!r}")
            if flag == "--metadata":
                wanted[key] = value
                continue
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value  # not JSON at all: refused below
            if isinstance(parsed, str | list | dict):
                raise UsageError(
                    f"--metadata-json {key}= takes a JSON number, true, false or null"
                    f" (use --metadata for text), got {value!r}"
                )
            wanted[key] = parsed
    return wanted


def tasks(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    wanted = _metadata_filter(args.metadata, args.metadata_json)
    with records(settings, "tasks") as backend:
        found = backend.find(
            TaskStatus(args.status), owner=args.owner, metadata=wanted, limit=args.limit
        )
    for task in found:
        print(json.dumps(task_json(task, operator=True)))
    if not found:  # on stderr: stdout stays one JSON object per task, and empty
        owner = f" of {args.owner}" if args.owner else ""
        print(f"no {args.status} tasks{owner}", file=sys.stderr)
    return EXIT_OK


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    backend = _sql_backend(settings, "migrate")
    try:
        backend.migrate()
        revision = backend.schema_revision()
    finally:
        backend.close()
    print(f"schema at revision {revision}")
    return EXIT_OK
