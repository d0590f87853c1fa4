"""examples/webhook_receiver.py runs: it takes a real delivery from a Processor, refuses a
forged one, and drops a duplicate."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imageproc import DeliveryStatus, Processor, Webhooks
from imageproc.testing import sample_image
from tests.support.processes import environment, eventually, free_port, stop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 60


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_webhook_receiver_example_verifies_deliveries_and_drops_duplicates(
    tmp_path: Path,
) -> None:
    port, secret = free_port(), Webhooks.new_secret()
    url = f"http://127.0.0.1:{port}/imageproc-webhook"
    receiver = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "webhook_receiver.py"), "--port", str(port)],
        cwd=tmp_path,
        env=environment(IMAGEPROC_WEBHOOK_SECRET=secret),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        forged = {"webhook-id": "msg_x", "webhook-timestamp": "1", "webhook-signature": "v1,AA=="}
        assert eventually(lambda: post(url, b"{}", forged), timeout=TIMEOUT) == 400
        webhooks = Webhooks(secrets=[secret], allow=["127.0.0.1"])
        with Processor.in_memory(webhooks=webhooks, isolation="thread") as processor:
            task = processor.submit(sample_image(64, 48), "thumb=fit:32x32,png", callback_url=url)
            processor.start(workers=1)
            [delivery] = eventually(
                lambda: processor.deliveries(DeliveryStatus.DELIVERED),
                timeout=TIMEOUT,
                what="the delivery to be delivered",
            )
        body = delivery.payload.encode()
        again = {**webhooks.headers(delivery.id, datetime.now(UTC), body)}
        assert post(url, body, {**again, "content-type": "application/json"}) == 204
    finally:
        code, stdout, stderr = stop(receiver, timeout=TIMEOUT)
    assert "Traceback" not in stderr
    assert stdout.splitlines() == [
        f"task {task.id} succeeded thumb",
        f"duplicate {delivery.id}, ignored",
    ]
    # uvicorn stops gracefully, then re-raises SIGTERM (uvicorn >= 0.29).
    assert code in (0, -signal.SIGTERM), stderr
