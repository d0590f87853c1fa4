"""Backends named by URLs: what ``Processor.from_urls`` (and the CLI and configuration) build."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from imageproc._clock import Clock, utcnow
from imageproc._protocols import Queue, Repository, Storage
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.errors import ConfigurationError

__all__ = ["SQL_DIALECTS", "Backends", "backends_from_urls", "database_scheme"]

#: The SQL databases a database URL may name, by dialect (``postgresql+psycopg`` is PostgreSQL).
SQL_DIALECTS: Final = ("sqlite", "postgresql")


def database_scheme(url: str) -> tuple[str, str]:
    """A database URL's scheme as written, and its dialect without the driver:
    ``postgresql+psycopg://db/x`` → ``("postgresql+psycopg", "postgresql")``."""
    scheme = url.partition("://")[0]
    return scheme, scheme.split("+")[0]


@attrs.frozen
class Backends:
    """The three backends a Processor works through."""

    storage: Storage
    queue: Queue
    repository: Repository


def backends_from_urls(
    database_url: str,
    storage_url: str,
    *,
    migrate: bool = True,
    clock: Clock = utcnow,
    engine_options: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Backends:
    """Build the backends named by a database URL and a storage URL.

    Databases: ``sqlite:///path.db``, ``postgresql+psycopg://…`` (``postgresql://`` means the
    same) or ``memory://``; the SQL schema is created or upgraded unless ``migrate=False``.
    Storage: ``file://path``, ``s3://bucket/prefix``, ``memory://`` or any other fsspec protocol
    installed. Raises :class:`~imageproc.ConfigurationError` for a URL it cannot serve.
    """
    scheme, dialect = database_scheme(database_url)
    repository: Repository
    queue: Queue
    if scheme == "memory":
        memory = MemoryRepository(clock=clock)
        repository, queue = memory, MemoryQueue(memory)
    elif dialect in SQL_DIALECTS:
        from imageproc.backends.sql._backend import SQLBackend

        sql = SQLBackend(database_url, clock=clock, **dict(engine_options or {}))
        if migrate:
            sql.migrate()
        repository = queue = sql
    else:
        raise ConfigurationError(
            f"unsupported database URL scheme {scheme!r}: use sqlite, postgresql or memory"
        )
    if storage_url.partition("://")[0] == "memory" and not storage_options:
        return Backends(MemoryStorage(clock=clock), queue, repository)
    from imageproc.backends.fsspec._storage import FsspecStorage

    storage = FsspecStorage(storage_url, **dict(storage_options or {}))
    return Backends(storage, queue, repository)
