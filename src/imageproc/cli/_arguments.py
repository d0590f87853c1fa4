"""The ``imageproc`` command line: the argparse parser of every command and its flags, the
settings a flag can set, and the logging every command starts with."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

from imageproc.__version__ import __version__
from imageproc._parsing import parse_whole_number
from imageproc._task import TaskStatus
from imageproc.cli import _process, _records, _serve, _webhooks, _worker
from imageproc.cli._durations import parse_duration
from imageproc.config import LOG_LEVELS

__all__ = ["SETTING_FLAGS", "build_parser", "configure_logging"]

#: Settings that a command-line flag can set (``--database-url`` → ``database_url``).
SETTING_FLAGS = (
    "database_url",
    "storage_url",
    "host",
    "port",
    "workers",
    "metrics_port",
    "log_level",
    "root_path",
)


def build_parser() -> argparse.ArgumentParser:
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
    serve.set_defaults(command=_serve.serve)

    worker = command("worker", "run workers only, sharing the database and storage")
    worker.add_argument("--workers", help="worker threads, N or MIN:MAX (IMAGEPROC_WORKERS)")
    worker.add_argument("--host", help="address the metrics listen on (IMAGEPROC_HOST)")
    worker.add_argument(
        "--metrics-port", help="serve Prometheus metrics on this port (IMAGEPROC_METRICS_PORT)"
    )
    worker.add_argument("--no-migrate", action="store_true", help=_NO_MIGRATE)
    worker.set_defaults(command=_worker.worker)

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
    process.set_defaults(command=_process.process)

    status = command("status", "print a task as JSON")
    status.add_argument("task_id", metavar="TASK_ID")
    status.set_defaults(command=_records.status)

    migrate = command("migrate", "create or upgrade the SQL schema")
    migrate.set_defaults(command=_records.migrate)

    purge = command(
        "purge",
        "delete finished tasks older than a duration, with files, and originals no task uses",
    )
    purge.add_argument(
        "--older-than",
        required=True,
        type=parse_duration,
        metavar="DURATION",
        help="such as 30d, 12h, 90m or 3600s",
    )
    purge.add_argument(
        "--orphans-older-than",
        type=parse_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="also delete stored originals that no task refers to once they are this old"
        " (default: 1h); a younger one may belong to a task that is being recorded",
    )
    purge.set_defaults(command=_records.purge)

    listing = command("tasks", "list tasks in a status, one JSON object per line")
    listing.add_argument(
        "--status",
        required=True,
        choices=[status.value for status in TaskStatus],
        help="dead lists the dead-letter set",
    )
    listing.add_argument("--owner", help="only this API key owner's tasks")
    listing.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=TEXT",
        help="only tasks whose metadata has KEY with this text (repeatable)",
    )
    listing.add_argument(
        "--metadata-json",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="only tasks whose metadata has KEY with this JSON number, true, false or null",
    )
    listing.add_argument("--limit", type=_whole_number, default=100, help="most tasks shown (100)")
    listing.set_defaults(command=_records.tasks)
    webhooks = command("webhooks", "list webhook deliveries, send dead ones again, make a secret")
    _webhooks.add_commands(webhooks, common, _whole_number)
    return parser


_NO_MIGRATE = "do not create or upgrade the schema at startup (run `imageproc migrate` first)"


def _whole_number(text: str) -> int:
    # Not type=int: int() also reads other scripts' digits and "1_000".
    try:
        return parse_whole_number(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":
        # Alembic narrates every migration step at INFO; "migrate" prints the one line that matters.
        logging.getLogger("alembic").setLevel(logging.WARNING)
