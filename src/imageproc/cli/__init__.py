"""The ``imageproc`` command: ``serve``, ``worker``, ``process``, ``status`` and ``migrate``.

::

    imageproc serve [--host H] [--port P] [--workers MIN:MAX]   HTTP API + embedded workers
    imageproc worker [--workers MIN:MAX] [--metrics-port N]     workers only
    imageproc process FILES… [-p PIPELINE] [-o DIR]             one-shot local processing
    imageproc status TASK_ID                                    a task as JSON
    imageproc migrate                                           create or upgrade the SQL schema
    imageproc purge --older-than 30d [--orphans-older-than 1h]  delete old finished tasks
    imageproc tasks --status dead [--limit N]                   list tasks (JSON lines)
    imageproc webhooks list|resend|secret                       webhook deliveries

Settings come from flags, then ``IMAGEPROC_*`` environment variables, then a ``.env`` file (see
:mod:`imageproc.config` and ``.env.example``). Exit status: 0 on success, 1 when the work failed
(a bad image, an unknown task, an unreachable database), 2 for bad usage or configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from imageproc.cli._arguments import SETTING_FLAGS, build_parser, configure_logging
from imageproc.cli._reporting import EXIT_FAILED, EXIT_USAGE, UsageError, fail
from imageproc.config import Settings
from imageproc.errors import ConfigurationError, ImageprocError, InvalidPipeline

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``imageproc`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status. Errors are reported in one line on stderr, never as a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already printed
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    try:
        settings = Settings.load(
            env_file=getattr(args, "env_file", ".env"),
            **{name: getattr(args, name, None) for name in SETTING_FLAGS},
        )
        configure_logging(settings.log_level)
        command: Callable[[argparse.Namespace, Settings], int] = args.command
        return command(args, settings)
    except (ConfigurationError, InvalidPipeline, UsageError) as error:
        return fail(f"{error}", EXIT_USAGE)
    except ImageprocError as error:  # an unknown task, an unreachable database, …
        return fail(f"{error}", EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
