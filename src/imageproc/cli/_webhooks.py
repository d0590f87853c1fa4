"""``imageproc webhooks``: list deliveries (the dead ones by default), send dead ones again,
and make a signing secret."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from imageproc._clock import utcnow
from imageproc.cli._records import records
from imageproc.cli._reporting import EXIT_OK, UsageError
from imageproc.config import Settings
from imageproc.delivery._outbox import DeliveryStatus
from imageproc.delivery._webhooks import Webhooks

__all__ = ["add_commands"]


def add_commands(
    webhooks: argparse.ArgumentParser,
    common: argparse.ArgumentParser,
    whole_number: Callable[[str], int],
) -> None:
    """The subcommands of ``imageproc webhooks`` (``whole_number``: how counts are read)."""
    actions = webhooks.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", parents=[common], help="list deliveries, one JSON object per line"
    )
    listing.add_argument(
        "--status",
        default=DeliveryStatus.DEAD.value,
        choices=[status.value for status in DeliveryStatus],
        help="dead (the default) lists those whose every try failed",
    )
    listing.add_argument("--task", help="only this task's deliveries")
    listing.add_argument("--owner", help="only this API key owner's deliveries")
    listing.add_argument("--limit", type=whole_number, default=100, help="at most this many")
    listing.set_defaults(command=list_deliveries)
    resend = actions.add_parser(
        "resend", parents=[common], help="send dead deliveries again, with a fresh schedule"
    )
    resend.add_argument("ids", nargs="*", metavar="ID", help="the deliveries (webhook-id)")
    resend.add_argument("--all", action="store_true", help="every dead delivery")
    resend.add_argument("--owner", help="only this API key owner's deliveries")
    resend.set_defaults(command=resend_deliveries)
    secret = actions.add_parser(
        "secret", parents=[common], help="print a new signing secret (whsec_…)"
    )
    secret.set_defaults(command=new_secret)


def list_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    with records(settings, "webhooks list") as backend:
        found = backend.deliveries(
            DeliveryStatus(args.status), owner=args.owner, task_id=args.task, limit=args.limit
        )
    for delivery in found:
        print(json.dumps(delivery.to_json()))
    if not found:  # on stderr: stdout stays one JSON object per delivery, and empty
        print(f"no {args.status} deliveries", file=sys.stderr)
    return EXIT_OK


def resend_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.ids) == args.all:
        raise UsageError("name the deliveries to send again, or give --all (not both)")
    with records(settings, "webhooks resend") as backend:
        count = backend.resend_deliveries(args.ids or None, now=utcnow(), owner=args.owner)
    print(f"{count} dead deliveries due again")
    return EXIT_OK


def new_secret(args: argparse.Namespace, settings: Settings) -> int:
    print(Webhooks.new_secret())
    return EXIT_OK
