"""How fast ``submit_url`` fetches images: from a server on loopback, at a given concurrency.

    python benchmarks/fetch.py [--images 400] [--concurrency 16] [--size 50]

A ``ThreadingHTTPServer`` on 127.0.0.1 serves one JPEG of about ``--size`` KB under ``--images``
different paths. ``--concurrency`` threads then fetch every path three ways, in the same run:

* **reference**: a plain ``httpx.Client`` GET per path (one client per thread, connections
  kept): what a fetch costs with none of imageproc's checks;
* **fetch**: ``Processor.fetch`` (the URL checked, the host resolved and checked, a pinned
  connection, the body read to the limit under a deadline): the fetch ``submit_url`` makes;
* **submit_url**: the whole product path, ``Processor.submit_url`` on SQLite and a local
  folder (fetch, then the image checked, stored and its task recorded; no worker runs).

Reported: images per second for each, and each ratio to the reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# benchmarks/http.py would shadow the standard library's http: run as a script, this folder is
# first on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from imageproc import Fetching, Processor  # noqa: E402


def picture(kilobytes: int) -> bytes:
    import io
    import random

    side = 64
    while True:
        rng = random.Random(side)
        image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        if len(out.getvalue()) >= kilobytes * 1024:
            return out.getvalue()
        side += 16


def serve(body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "image/jpeg")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def timed(concurrency: int, urls: list[str], one: Any) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for result in pool.map(one, urls):
            assert result
    return len(urls) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=50, help="KB per image")
    args = parser.parse_args()
    body = picture(args.size)
    server = serve(body)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/images/{i}.jpg" for i in range(args.images)]
    local = threading.local()

    def reference(url: str) -> bool:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(trust_env=False)
        return len(client.get(url).content) == len(body)

    folder = tempfile.mkdtemp()
    fetching = Fetching(allow=["127.0.0.1"])
    with Processor.from_urls(
        f"sqlite:///{folder}/tasks.db", f"file://{folder}/images", fetching=fetching
    ) as processor:
        rows = [
            ("reference", timed(args.concurrency, urls, reference)),
            ("fetch", timed(args.concurrency, urls, lambda u: len(processor.fetch(u)) > 0)),
            (
                "submit_url",
                timed(args.concurrency, urls, lambda u: processor.submit_url(u, "png") is not None),
            ),
        ]
    server.shutdown()
    print(
        f"{args.images} images of {len(body) // 1024} KB from loopback,"
        f" {args.concurrency} at once; Python {sys.version.split()[0]}"
    )
    for name, rate in rows:
        print(f"{name:<11} {rate:8.0f} images/s   {rate / rows[0][1]:5.2f}x the reference")


if __name__ == "__main__":
    main()
