"""Uploads per second through the HTTP adapter against a bare Starlette endpoint (the floor).

    python benchmarks/http.py [--requests 2000] [--concurrency 16] [--workers 0]

Both servers run as their own uvicorn process on 127.0.0.1, one after the other in the same run,
and get the same requests: a ~200 KB JPEG in a multipart form (the documented way to upload), from
``--concurrency`` client threads each holding one keep-alive connection (``http.client``). Every
request carries a different image (a counter in a JPEG comment), as real uploads do: imageproc
stores originals content-addressed, so the same bytes sent again are stored once, and a run of
identical uploads would measure only that shortcut (``--same-image`` measures it on purpose).

* floor: a Starlette endpoint that reads the body and writes it to a new file (off the event
  loop), without a sync: the file survives the server process crashing (it is in the operating
  system's cache), not necessarily a power loss;
* durable floor: the same endpoint, syncing the file and its directory before it answers: the
  least work for the promise imageproc's ``202`` makes, that the upload survives a power loss
  (imageproc also syncs its SQLite log, once per group of concurrent uploads);
* imageproc: ``examples/starlette_app.py`` on SQLite + a local folder, with ``--workers`` worker
  threads in the server (0 by default: the upload path alone; with workers the server's CPU is
  shared with the image processing), API keys on;
* imageproc (raw body): the same server, the JPEG sent as an ``image/jpeg`` body.

Prints requests per second, p50 and p99 latency, the CPU time each request cost the server and
the client (the server's from ``/proc``, so on Linux; both share the machine's cores), and each
row's throughput as a ratio of each floor's. Bounded: a fixed number of requests, a timeout on
every request and on the servers.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called http.py, and running it puts its folder first on sys.path, where it would
# shadow the standard library's http package: drop the folder before importing anything else.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import http.client  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"
#: A JPEG comment in the image whose 16 hex digits each request replaces with its own number.
MARK = b"imageproc-bench:"
MARK_DIGITS = 16
_numbers = itertools.count()


def jpeg_of_about(target: int) -> bytes:
    """A JPEG of roughly ``target`` bytes: a noisy photo-like picture at quality 85."""
    rng = random.Random(7)
    side = 320
    while True:
        noise = bytes(rng.getrandbits(8) for _ in range(side * side * 3 // 4))
        small = Image.frombytes("RGB", (side // 2, side // 2), noise[: (side // 2) ** 2 * 3])
        image = small.resize((side, side), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85, comment=MARK + b"0" * MARK_DIGITS)
        if buffer.tell() >= target:
            return buffer.getvalue()
        side += 40


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\n'
            "thumb=fit:256x256,webp\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


# -- the floor server ---------------------------------------------------------------------------


def serve_floor(port: int, folder: str, durable: bool) -> None:
    """Run the bare endpoint: read the body, write it to a new file, answer 202.

    ``durable``: sync the file and its directory before answering, the least an endpoint must
    do for the body to survive a power loss, as an upload imageproc has accepted does.
    """
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def write(path: str, data: bytes) -> None:
        with open(path, "xb") as file:
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        if durable:
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    async def upload(request: Request) -> JSONResponse:
        body = await request.body()
        name = uuid.uuid4().hex
        await run_in_threadpool(write, os.path.join(folder, name), body)
        return JSONResponse({"id": name}, status_code=202)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"]), Route("/healthz", healthz)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- driving a server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], health_url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health_url, timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"server did not start: {command}\n{process.communicate()[1].decode()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load(
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    requests: int,
    concurrency: int,
    *,
    same_image: bool = False,
) -> tuple[float, list[float]]:
    """Send ``requests`` POSTs from ``concurrency`` threads; (seconds, latencies).

    Each request gets a body of its own (a new number in the image's comment) unless
    ``same_image``.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    failures: list[str] = []
    at = body.index(MARK) + len(MARK)
    head, tail = body[:at], body[at + MARK_DIGITS :]

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        try:
            while True:
                with lock:
                    if next(counter, None) is None:
                        break
                    number = next(_numbers)
                content = body if same_image else b"%s%016x%s" % (head, number, tail)
                started = time.perf_counter()
                connection.request("POST", path, body=content, headers=headers)
                response = connection.getresponse()
                response.read()
                mine.append(time.perf_counter() - started)
                if response.status != 202:
                    failures.append(str(response.status))
                    break
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"requests failed with status {failures[:5]}")
    return elapsed, latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far; NaN off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Row = tuple[str, float, float, float, float, float]


def measure(
    name: str,
    server: subprocess.Popen[bytes],
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    args: argparse.Namespace,
) -> Row:
    """One row: uploads/s, p50 and p99 in ms, server and client CPU ms per request."""
    same = args.same_image
    load(port, path, body, headers, min(200, args.requests), args.concurrency, same_image=same)
    # Earlier rows leave hundreds of MB of unsynced writes (the floor's, the temporary files'):
    # write them out now, or the kernel does it during this row and charges it to the row.
    if hasattr(os, "sync"):
        os.sync()
    server_before, client_before = cpu_seconds(server.pid), time.process_time()
    elapsed, latencies = load(
        port, path, body, headers, args.requests, args.concurrency, same_image=same
    )
    server_cpu = cpu_seconds(server.pid) - server_before
    client_cpu = time.process_time() - client_before
    cuts = statistics.quantiles(latencies, n=100)
    count = len(latencies)
    return (
        name,
        count / elapsed,
        cuts[49] * 1000,
        cuts[98] * 1000,
        server_cpu / count * 1000,
        client_cpu / count * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="worker threads in the server")
    parser.add_argument(
        "--same-image",
        action="store_true",
        help="send the same image every time (imageproc then stores the original once)",
    )
    parser.add_argument(
        "--serve-floor", nargs=3, metavar=("PORT", "DIR", "SYNC"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_floor:
        port_text, directory, sync = args.serve_floor
        serve_floor(int(port_text), directory, sync == "sync")
        return

    image = jpeg_of_about(200 * 1024)
    form, form_type = multipart(image)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="imageproc-bench-") as folder:
        for sync, name in (("nosync", "floor: write"), ("sync", "durable floor: write + sync")):
            port = free_port()
            floor_dir = os.path.join(folder, f"floor-{sync}")
            os.mkdir(floor_dir)
            floor = start(
                [sys.executable, __file__, "--serve-floor", str(port), floor_dir, sync],
                f"http://127.0.0.1:{port}/healthz",
            )
            try:
                rows.append(
                    measure(name, floor, port, "/upload", form, {"Content-Type": form_type}, args)
                )
            finally:
                stop(floor)

        port = free_port()
        server = start(
            [
                sys.executable,
                str(ROOT / "examples" / "starlette_app.py"),
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--database",
                f"sqlite:///{folder}/tasks.db",
                "--storage",
                f"file://{folder}/store",
                "--api-keys",
                f"bench:{KEY}",
            ],
            f"http://127.0.0.1:{port}/api/healthz",
        )
        auth = {"Authorization": f"Bearer {KEY}"}
        try:
            rows.append(
                measure(
                    f"imageproc multipart (workers={args.workers})",
                    server,
                    port,
                    "/api/upload",
                    form,
                    {**auth, "Content-Type": form_type},
                    args,
                )
            )
            rows.append(
                measure(
                    f"imageproc raw body (workers={args.workers})",
                    server,
                    port,
                    "/api/upload?pipeline=thumb%3Dfit%3A256x256%2Cwebp",
                    image,
                    {**auth, "Content-Type": "image/jpeg"},
                    args,
                )
            )
        finally:
            stop(server)

    floor_rate, durable_rate = rows[0][1], rows[1][1]
    print(
        f"{len(image) // 1024} KB JPEG ({'the same' if args.same_image else 'a new one'} each"
        f" time), {args.requests} requests, concurrency {args.concurrency},"
        f" {os.cpu_count()} CPUs (client and server share them)"
    )
    print(
        f"{'':40} {'uploads/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'server CPU':>10} {'client CPU':>10} {'x floor':>8} {'x durable':>9}"
    )
    for name, rate, p50, p99, server_ms, client_ms in rows:
        print(
            f"{name:40} {rate:10.1f} {p50:8.1f} {p99:8.1f}"
            f" {server_ms:8.2f}ms {client_ms:8.2f}ms {rate / floor_rate:8.2f}"
            f" {rate / durable_rate:9.2f}"
        )


if __name__ == "__main__":
    main()
