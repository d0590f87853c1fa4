"""A webhook receiver: the endpoint an application exposes for imageproc's callbacks. It checks
each delivery's signature (Standard Webhooks, with the ``standardwebhooks`` package), drops
the duplicates that at-least-once delivery allows (same ``webhook-id``), and acts on the status.

    IMAGEPROC_WEBHOOK_SECRET=whsec_… python examples/webhook_receiver.py [--port 8001]

Point tasks at it with ``submit(…, callback_url="http://127.0.0.1:8001/imageproc-webhook")``
(the Processor's ``Webhooks`` must hold the same secret; ``imageproc webhooks secret`` makes
one). A delivery that is not signed with the secret, or whose timestamp is more than five
minutes off, is answered 400 and never acted on; anything but a 2xx makes imageproc try again
later, so answer 2xx only once the delivery is safely handled.
"""

from __future__ import annotations

import argparse
import os
import threading

import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# In production, keep the ids seen in your database (a unique column, with the work the
# delivery causes, in one transaction), not in memory.
_seen: set[str] = set()
_lock = threading.Lock()


def build(secret: str) -> Starlette:
    """The receiving application."""
    webhook = Webhook(secret)

    async def receive(request: Request) -> Response:
        body = await request.body()  # the exact bytes: the signature covers them
        try:
            task = webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return Response("bad signature", status_code=400)
        with _lock:
            duplicate = request.headers["webhook-id"] in _seen
            _seen.add(request.headers["webhook-id"])
        if duplicate:
            print(f"duplicate {request.headers['webhook-id']}, ignored", flush=True)
        else:
            names = ", ".join(output["name"] for output in task["outputs"])
            print(f"task {task['id']} {task['status']} {names}".rstrip(), flush=True)
        return Response(status_code=204)

    return Starlette(routes=[Route("/imageproc-webhook", receive, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    secret = os.environ.get("IMAGEPROC_WEBHOOK_SECRET")
    if not secret:
        parser.error("set IMAGEPROC_WEBHOOK_SECRET to the secret the Processor signs with")
    uvicorn.run(build(secret), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
