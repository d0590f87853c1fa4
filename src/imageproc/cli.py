"""The ``imageproc`` command: ``serve``, ``worker``, ``process``, ``status`` and ``migrate``.

::

    imageproc serve [--host H] [--port P] [--workers MIN:MAX]   HTTP API + embedded workers
    imageproc worker [--workers MIN:MAX] [--metrics-port N]     workers only
    imageproc process FILES… [-p PIPELINE] [-o DIR]             one-shot local processing
    imageproc status TASK_ID                                    a task as JSON
    imageproc migrate                                           create or upgrade the SQL schema
    imageproc purge --older-than 30d                            delete old finished tasks
    imageproc tasks --status dead [--limit N]                   list tasks (JSON lines)

Settings come from flags, then ``IMAGEPROC_*`` environment variables, then a ``.env`` file (see
:mod:`imageproc.config` and ``.env.example``). Exit status: 0 on success, 1 when the work failed
(a bad image, an unknown task, an unreachable database), 2 for bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageproc.__version__ import __version__
from imageproc._errors import ConfigurationError, ImageprocError, InvalidPipeline
from imageproc._signals import on_stop_signals
from imageproc._task import TaskStatus
from imageproc._taskjson import task_json
from imageproc.config import LOG_LEVELS, Settings, parse_whole_number

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from imageproc._signing import ApiKeys
    from imageproc._task import Task
    from imageproc.backends.sql._backend import SQLBackend
    from imageproc.engine._imaging import ImageLimits, Rendered
    from imageproc.metrics import Metrics
    from imageproc.pipeline._model import Pipeline

__all__ = ["main", "task_to_json"]

logger = logging.getLogger("imageproc.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """Bad usage found after parsing (exit 2), as opposed to work that failed (exit 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``imageproc`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status. Errors are reported in one line on stderr, never as a traceback."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already printed
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    try:
        settings = Settings.load(
            env_file=getattr(args, "env_file", ".env"),
            **{name: getattr(args, name, None) for name in _SETTING_FLAGS},
        )
        _configure_logging(settings.log_level)
        command: Callable[[argparse.Namespace, Settings], int] = args.command
        return command(args, settings)
    except (ConfigurationError, InvalidPipeline, _UsageError) as error:
        return _fail(f"{error}", EXIT_USAGE)
    except ImageprocError as error:  # an unknown task, an unreachable database, …
        return _fail(f"{error}", EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int) -> int:
    print(f"imageproc: error: {message}", file=sys.stderr)
    return status


# -- arguments ----------------------------------------------------------------------------------

#: Settings that a command-line flag can set (``--database-url`` → ``database_url``).
_SETTING_FLAGS = (
    "database_url",
    "storage_url",
    "host",
    "port",
    "workers",
    "metrics_port",
    "log_level",
    "root_path",
)


def _parser() -> argparse.ArgumentParser:
    # Global flags are accepted before and after the command name ("imageproc --database-url X
    # worker" and "imageproc worker --database-url X"): a parent parser shared by both levels.
    # SUPPRESS keeps a subcommand's unset copy from erasing what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url", default=argparse.SUPPRESS, help="IMAGEPROC_DATABASE_URL (sqlite:///…)"
    )
    common.add_argument(
        "--storage-url", default=argparse.SUPPRESS, help="IMAGEPROC_STORAGE_URL (file://…)"
    )
    common.add_argument(
        "--env-file",
        default=argparse.SUPPRESS,
        help="read settings from this file instead of ./.env",
    )
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help="IMAGEPROC_LOG_LEVEL"
    )

    parser = argparse.ArgumentParser(
        prog="imageproc",
        description="Asynchronous image processing: an HTTP service, workers, and local tools.",
        epilog="Settings: flags, then IMAGEPROC_* environment variables, then .env.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"imageproc {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        # The summary is the line in `imageproc --help` and the description of its own --help.
        return commands.add_parser(
            name, parents=[common], help=summary, description=summary[0].upper() + summary[1:]
        )

    serve = command("serve", "run the HTTP API with embedded workers")
    serve.add_argument("--host", help="address to listen on (IMAGEPROC_HOST, 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (IMAGEPROC_PORT, 8000)")
    serve.add_argument("--workers", help="worker threads, N or MIN:MAX (IMAGEPROC_WORKERS)")
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="serve HTTP only; `imageproc worker` processes elsewhere",
    )
    serve.add_argument(
        "--root-path", help="path prefix a proxy serves this under (IMAGEPROC_ROOT_PATH)"
    )
    serve.add_argument("--no-migrate", action="store_true", help=_NO_MIGRATE)
    serve.set_defaults(command=_serve)

    worker = command("worker", "run workers only, sharing the database and storage")
    worker.add_argument("--workers", help="worker threads, N or MIN:MAX (IMAGEPROC_WORKERS)")
    worker.add_argument("--host", help="address the metrics listen on (IMAGEPROC_HOST)")
    worker.add_argument(
        "--metrics-port", help="serve Prometheus metrics on this port (IMAGEPROC_METRICS_PORT)"
    )
    worker.add_argument("--no-migrate", action="store_true", help=_NO_MIGRATE)
    worker.set_defaults(command=_worker)

    process = command("process", "process local files now, without a queue")
    process.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="images to process; a folder stands for the files directly in it",
    )
    process.add_argument(
        "-p", "--pipeline", help="pipeline text, e.g. thumb=fit:256x256,webp (default: 800px JPEG)"
    )
    process.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="where DIR/<name>-<variant>.<ext> go (default: the current folder)",
    )
    process.add_argument(
        "-j",
        "--jobs",
        type=_whole_number,
        default=os.cpu_count() or 1,
        metavar="N",
        help="files processed at once (default: one per core, %(default)s here)",
    )
    process.set_defaults(command=_process)

    status = command("status", "print a task as JSON")
    status.add_argument("task_id", metavar="TASK_ID")
    status.set_defaults(command=_status)

    migrate = command("migrate", "create or upgrade the SQL schema")
    migrate.set_defaults(command=_migrate)

    purge = command("purge", "delete finished tasks older than a duration, with files")
    purge.add_argument(
        "--older-than",
        required=True,
        type=_duration,
        metavar="DURATION",
        help="such as 30d, 12h, 90m or 3600s",
    )
    purge.set_defaults(command=_purge)

    listing = command("tasks", "list tasks in a status, one JSON object per line")
    listing.add_argument(
        "--status",
        required=True,
        choices=[status.value for status in TaskStatus],
        help="dead lists the dead-letter set",
    )
    listing.add_argument("--owner", help="only this API key owner's tasks")
    listing.add_argument("--limit", type=_whole_number, default=100, help="most tasks shown (100)")
    listing.set_defaults(command=_tasks)
    return parser


_NO_MIGRATE = "do not create or upgrade the schema at startup (run `imageproc migrate` first)"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _whole_number(text: str) -> int:
    # Not type=int: int() also reads other scripts' digits and "1_000".
    try:
        return parse_whole_number(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _duration(text: str) -> timedelta:
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


def _say_duration(duration: timedelta) -> str:
    """A duration in the largest unit that divides it (``30d``, ``90m``), as ``--older-than``
    takes it."""
    seconds = int(duration.total_seconds())
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":
        # Alembic narrates every migration step at INFO; "migrate" prints the one line that matters.
        logging.getLogger("alembic").setLevel(logging.WARNING)


# -- serve --------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import uvicorn

        from imageproc.http import _serving as serving
        from imageproc.http._app import create_app
    except ImportError as error:
        raise ConfigurationError(
            f"serve needs the http extra (pip install 'imageproc[http]'): {error}"
        ) from None
    from imageproc._signing import parse_api_keys, parse_max_priorities

    metrics = _metrics_or_none()
    if metrics is None:
        logger.info("prometheus_client is not installed: /metrics is off (extra 'metrics')")
    if not settings.signing_keys:
        # create_app then signs with a random key: URLs work, but only against this process and
        # only until it restarts. Fine on a laptop, not behind a load balancer.
        logger.warning("IMAGEPROC_SIGNING_KEYS is not set: signed URLs die with this process")
    servers: list[uvicorn.Server] = []  # the one server, once built; read by the handler

    def _stop(name: str) -> None:
        # Also called after uvicorn has already stopped serving on this signal (it hands the
        # signal on once done), so say what is left to do rather than only that it came.
        logger.info("received %s: letting tasks in flight finish, then stopping", name)
        stopping.set()
        for server in servers:
            server.should_exit = True

    stopping = threading.Event()
    # Signed URLs in the access log would work, like passwords, until they expire.
    access_log, redactor = logging.getLogger("uvicorn.access"), serving.RedactQuerySecrets()
    # Installed before the slow part (migrations, connecting) so a SIGTERM during startup stops
    # the server as soon as it starts instead of killing the process half-way. uvicorn swaps in
    # its own handlers while it serves, then restores these and re-raises the signal it caught:
    # with the default SIGTERM handler that would kill the process before the workers stop.
    with on_stop_signals(_stop):
        try:
            with settings.processor(events=metrics, migrate=not args.no_migrate) as processor:
                if metrics is not None:
                    metrics.watch(processor)
                app = _guarded_app(
                    create_app(
                        processor,
                        api_keys=parse_api_keys(settings.api_keys) if settings.api_keys else None,
                        signing_keys=settings.signing_keys,
                        max_upload_bytes=settings.max_upload_bytes,
                        max_queue_depth=settings.max_queue_depth,
                        max_priority=parse_max_priorities(settings.max_priority),
                        max_uploads_per_minute=settings.max_uploads_per_minute,
                        url_ttl=timedelta(seconds=settings.url_ttl),
                        metrics_registry=metrics.registry if metrics is not None else None,
                        # Settings refused weak keys unless they are allowed; create_app warns.
                        allow_weak_keys=settings.allow_weak_keys,
                        max_auth_failures=settings.max_auth_failures,
                        auth_failure_window=timedelta(seconds=settings.auth_failure_window),
                    ),
                    settings,
                )
                if not args.no_workers:
                    processor.start(settings.workers)
                low, high = settings.workers
                logger.info(
                    "serving on http://%s:%d with %s, tasks in %s, files in %s",
                    settings.host,
                    settings.port,
                    "no workers" if args.no_workers else f"{low}-{high} worker threads",
                    _safe_url(settings.database_url),
                    _safe_url(settings.storage_url),
                )
                limit = settings.max_connections
                config = uvicorn.Config(
                    app,
                    host=settings.host,
                    port=settings.port,
                    log_level=settings.log_level,
                    lifespan="on",
                    root_path=settings.root_path,
                    # uvicorn has no deadline for request headers: its h11 protocol with one (always
                    # h11, even where httptools is installed, which has none either).
                    http=serving.header_deadline_protocol(settings.header_timeout),
                    # uvicorn answers 503 once this many connections are open, the one asking
                    # included: one more, so that max_connections connections are all served.
                    limit_concurrency=None if limit is None else limit + 1,
                    timeout_keep_alive=settings.keep_alive_timeout,
                )
                # After Config, which (re)configures uvicorn's loggers.
                access_log.addFilter(redactor)
                servers.append(uvicorn.Server(config))
                if not stopping.is_set():
                    try:
                        servers[0].run()
                    except SystemExit as exit:
                        # uvicorn exits when it cannot start (the port is taken); it has logged why.
                        if exit.code:
                            where = f"{settings.host}:{settings.port}"
                            return _fail(
                                f"the HTTP server could not start on {where} (see the log above)",
                                EXIT_FAILED,
                            )
                # Leaving the block: HTTP has stopped taking uploads; tasks in flight finish, then
                # the backends close.
        finally:
            access_log.removeFilter(redactor)
    return EXIT_OK


def _guarded_app(app: Starlette, settings: Settings) -> Any:
    """``app`` (``create_app``'s) inside the bounds on slow bodies and on uploads per API key,
    counted by the app's own keys."""
    from imageproc.http import _serving as serving

    api_keys: ApiKeys | None = app.state.imageproc.api_keys
    guarded: Any = app
    if api_keys is not None and settings.max_uploads_per_key is not None:
        guarded = serving.UploadLimit(
            guarded, api_keys=api_keys, max_uploads=settings.max_uploads_per_key
        )
    # Outermost, so that a 429 sent before the body is read also closes the connection.
    return serving.BodyDeadline(
        guarded, timeout=settings.body_timeout, min_rate=settings.body_min_rate
    )


def _metrics_or_none() -> Metrics | None:
    """A :class:`~imageproc.metrics.Metrics`, or None without the ``metrics`` extra."""
    try:
        from imageproc.metrics import Metrics
    except ImportError:
        return None
    return Metrics()


# -- worker -------------------------------------------------------------------------------------


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    port = settings.metrics_port
    metrics = _metrics_or_none() if port is not None else None
    if port is not None and metrics is None:
        raise ConfigurationError(
            "--metrics-port needs the metrics extra (pip install 'imageproc[metrics]')"
        )
    with settings.processor(events=metrics, migrate=not args.no_migrate) as processor:
        if metrics is not None and port is not None:
            metrics.watch(processor)
            try:
                # On IMAGEPROC_HOST (loopback by default): set it to 0.0.0.0 for a remote scraper.
                metrics.serve(port, settings.host)
            except OSError as error:
                raise ConfigurationError(
                    f"cannot serve metrics on {settings.host}:{port}: {error.strerror}"
                ) from None
            logger.info("metrics on http://%s:%d/metrics", settings.host, port)
        low, high = settings.workers
        logger.info(
            "worker started: %d-%d threads on %s", low, high, _safe_url(settings.database_url)
        )
        try:
            processor.run(settings.workers)
        finally:
            if metrics is not None:
                metrics.close()
    return EXIT_OK


def _safe_url(url: str) -> str:
    # A database URL may hold a password (a storage URL seldom does, but may): the log gets the
    # scheme and what follows any "user:password@".
    scheme, separator, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if separator else url


# -- process ------------------------------------------------------------------------------------


def _process(args: argparse.Namespace, settings: Settings) -> int:
    from imageproc.engine._imaging import ImageLimits
    from imageproc.pipeline._model import DEFAULT_PIPELINE, Pipeline, PipelineLimits

    if args.jobs < 1:
        raise _UsageError(f"--jobs must be at least 1, got {args.jobs}")
    pipeline = DEFAULT_PIPELINE
    if args.pipeline is not None:
        pipeline = Pipeline.parse(args.pipeline)
        PipelineLimits().check(pipeline)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _UsageError(f"cannot create {out}: {error.strerror}") from None
    limits = ImageLimits(max_bytes=settings.max_upload_bytes)
    files = list(dict.fromkeys(_expand(args.files)))  # a file given twice is done once
    if not files:
        raise _UsageError("no files to process (the folders given are empty)")
    _refuse_shared_names(files)
    total, done, failed = len(files), 0, 0
    progress = _Progress(total)
    # Pillow releases the GIL while it decodes, resizes and encodes, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(args.jobs, total)) as pool:
        futures = {pool.submit(_process_one, path, pipeline, limits, out): path for path in files}
        # In the order files finish, so the count moves while one big file is still working.
        for future in as_completed(futures):
            path, problem = futures[future], future.result()
            done += 1
            progress.show(done, path.name)
            if problem is not None:
                failed += 1
                progress.error(f"{path}: {problem}")
    progress.finish(f"{total - failed} processed, {failed} failed, into {out}")
    return EXIT_FAILED if failed else EXIT_OK


def _expand(paths: list[Path]) -> list[Path]:
    """The files to process: each path given, a folder standing for the files directly in it
    (sorted; hidden ones left out). A path that does not exist stays, to be reported."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                child for child in path.iterdir() if child.is_file() and child.name[0] != "."
            )
        else:
            files.append(path)
    return files


def _refuse_shared_names(files: list[Path]) -> None:
    """Outputs are named ``<stem>-<variant>.<ext>``: refuse files that would overwrite each
    other's (``a/cat.jpg`` and ``b/cat.jpg``, or ``cat.jpg`` and ``cat.png``)."""
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    shared = [paths for paths in by_stem.values() if len(paths) > 1]
    if shared:
        clashes = "; ".join(" and ".join(str(p) for p in paths) for paths in shared)
        raise _UsageError(
            f"these files would write the same outputs (<name>-<variant>.<ext>): {clashes};"
            " process them into different --out folders, or rename them"
        )


def _process_one(path: Path, pipeline: Pipeline, limits: ImageLimits, out: Path) -> str | None:
    """Render every variant of one file into ``out``; the problem as text, or None."""
    from imageproc.engine import _imaging as imaging

    try:
        with path.open("rb") as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as error:
        return f"cannot read: {error.strerror}"
    if len(data) > limits.max_bytes:
        return f"larger than the limit of {limits.max_bytes} bytes"
    try:
        imaging.probe(data, limits)
        rendered: list[Rendered] = imaging.render(data, pipeline, limits)
    except ImageprocError as error:
        return str(error)
    except Exception as error:  # a file must not stop the batch; the rest still get done
        logger.debug("unexpected error on %s", path, exc_info=True)
        return f"unexpected {type(error).__name__}"
    try:
        for variant in rendered:
            (out / f"{path.stem}-{variant.name}.{variant.extension}").write_bytes(variant.data)
    except OSError as error:
        return f"cannot write: {error.strerror}"
    return None


class _Progress:
    """A progress bar on one line of stderr, redrawn in place, on a terminal
    (``[#####---------------] 10/40 cat.jpg``); ``[10/40] cat.jpg`` a line each elsewhere."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self._width = 0

    def show(self, done: int, name: str) -> None:
        line = f"[{done}/{self.total}] {name}"
        if self.tty:
            filled = _BAR * done // self.total
            line = f"[{'#' * filled}{'-' * (_BAR - filled)}] {done}/{self.total} {name}"
            sys.stderr.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            # Not a terminal (a log file, CI): one line per file, no carriage returns.
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def error(self, message: str) -> None:
        if self.tty:
            sys.stderr.write("\n")
            self._width = 0
        sys.stderr.write(f"error: {message}\n")

    def finish(self, summary: str) -> None:
        if self.tty and self._width:
            sys.stderr.write("\n")
        sys.stderr.write(summary + "\n")


#: Characters in the progress bar.
_BAR = 20


# -- status and migrate -------------------------------------------------------------------------


def _status(args: argparse.Namespace, settings: Settings) -> int:
    # Only the task records are needed: no storage (which would create its folder) and no
    # migration (a read-only command must not change the schema).
    with _records(settings, "status") as backend:
        task = backend.get(args.task_id)
    print(json.dumps(task_to_json(task), indent=2))
    return EXIT_OK


@contextmanager
def _records(settings: Settings, command: str) -> Iterator[SQLBackend]:
    """The task records of an existing, migrated database, for a command that only reads."""
    backend = _sql_backend(settings, command)
    try:
        if backend.schema_revision() is None:
            raise ConfigurationError(
                f"no imageproc tables in {_safe_url(settings.database_url)}:"
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


def task_to_json(task: Task) -> dict[str, Any]:
    """``task`` as ``status`` and ``tasks`` print it: the document ``GET /status`` returns
    (:func:`imageproc._taskjson.task_json`), for an operator: without URLs, with the real error
    messages, the owner and when the task is next due."""
    return task_json(task, operator=True)


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    # A maintenance command: it must not change the schema, and finds no tasks without one.
    _check_database(settings, "purge")
    with settings.processor(migrate=False) as processor:
        deleted = processor.purge(args.older_than)
    print(f"purged {deleted} finished task(s) older than {_say_duration(args.older_than)}")
    return EXIT_OK


def _tasks(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise _UsageError(f"--limit must be at least 1, got {args.limit}")
    with _records(settings, "tasks") as backend:
        found = backend.find(TaskStatus(args.status), owner=args.owner, limit=args.limit)
    for task in found:
        print(json.dumps(task_to_json(task)))
    if not found:  # on stderr: stdout stays one JSON object per task, and empty
        owner = f" of {args.owner}" if args.owner else ""
        print(f"no {args.status} tasks{owner}", file=sys.stderr)
    return EXIT_OK


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    backend = _sql_backend(settings, "migrate")
    try:
        backend.migrate()
        revision = backend.schema_revision()
    finally:
        backend.close()
    print(f"schema at revision {revision}")
    return EXIT_OK
