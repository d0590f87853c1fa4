"""The driver's errors as imageproc's, mapped where they leave the database: a lost connection, a
restarting server or a locked SQLite file is :class:`~imageproc.BackendUnavailable` (transient),
a missing or outdated schema a :class:`~imageproc.ConfigurationError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import exc

from imageproc.errors import BackendUnavailable, ConfigurationError

__all__ = ["brief", "driver_errors_mapped"]


@contextlib.contextmanager
def driver_errors_mapped() -> Iterator[None]:
    """Turn the driver's errors into imageproc's: a missing schema is a ConfigurationError, a
    lost connection or a locked file BackendUnavailable."""
    try:
        yield
    except exc.ProgrammingError as error:
        raise _schema_error(error) from error
    except (exc.OperationalError, exc.InterfaceError) as error:
        if "no such table" in str(error.orig):  # SQLite's word for a missing schema
            raise _schema_error(error) from error
        raise BackendUnavailable(f"database unavailable: {brief(error)}") from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise BackendUnavailable(f"database connection lost: {brief(error)}") from error
        raise
    except exc.TimeoutError as error:
        raise BackendUnavailable("no database connection free in time") from error


def brief(error: exc.DBAPIError | exc.SQLAlchemyError) -> str:
    """The first line of the driver's message, without the SQL or parameters it carries."""
    original = getattr(error, "orig", None) or error
    return (
        str(original).strip().splitlines()[0][:200]
        if str(original).strip()
        else type(original).__name__
    )


def _schema_error(error: exc.DBAPIError) -> ConfigurationError:
    return ConfigurationError(
        f"imageproc's tables are missing or out of date ({brief(error)}); run migrate()"
    )
