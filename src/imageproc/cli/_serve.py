"""``imageproc serve``: the HTTP API (the ``http`` extra) under uvicorn, with embedded workers, the
bounds on slow bodies and uploads per key around the app, and a graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from imageproc._signals import on_stop_signals
from imageproc.cli._reporting import EXIT_FAILED, EXIT_OK, fail, safe_url
from imageproc.cli._worker import metrics_or_none
from imageproc.config import Settings
from imageproc.errors import ConfigurationError

if TYPE_CHECKING:
    from types import FrameType

    import uvicorn
    from starlette.applications import Starlette

    from imageproc._signing import ApiKeys
    from imageproc.http._service import Service

__all__ = ["serve"]

logger = logging.getLogger("imageproc.cli")


def serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import uvicorn

        from imageproc.http import serving
        from imageproc.http._app import create_app
    except ImportError as error:
        raise ConfigurationError(
            f"serve needs the http extra (pip install 'imageproc[http]'): {error}"
        ) from None
    from imageproc._signing import parse_api_keys, parse_max_priorities

    metrics = metrics_or_none()
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
                api = create_app(
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
                )
                app = _guarded_app(api, settings)
                if not args.no_workers:
                    processor.start(settings.workers)
                low, high = settings.workers
                logger.info(
                    "serving on http://%s:%d with %s, tasks in %s, files in %s",
                    settings.host,
                    settings.port,
                    "no workers" if args.no_workers else f"{low}-{high} worker threads",
                    safe_url(settings.database_url),
                    safe_url(settings.storage_url),
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
                servers.append(_server_class(uvicorn.Server, api.state.imageproc)(config))
                if not stopping.is_set():
                    try:
                        servers[0].run()
                    except SystemExit as exit:
                        # uvicorn exits when it cannot start (the port is taken); it has logged why.
                        if exit.code:
                            where = f"{settings.host}:{settings.port}"
                            return fail(
                                f"the HTTP server could not start on {where} (see the log above)",
                                EXIT_FAILED,
                            )
                # Leaving the block: HTTP has stopped taking uploads; tasks in flight finish, then
                # the backends close.
        finally:
            access_log.removeFilter(redactor)
    return EXIT_OK


def _server_class(base: type[uvicorn.Server], service: Service) -> type[uvicorn.Server]:
    """uvicorn's server, answering the long-polls (``?wait=N``) of ``service`` at once when a
    stop signal comes: uvicorn waits for every open response before it stops, and a long-poll
    could hold it for up to a minute. (Event streams are ended by sse-starlette.)"""

    class Server(base):  # type: ignore[valid-type,misc]
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # A signal handler must not take locks the interrupted code may hold: the waiters
            # are woken from the event loop, as its next callback.
            with contextlib.suppress(RuntimeError):  # no loop runs (yet): nobody waits
                asyncio.get_running_loop().call_soon_threadsafe(service.stop_waiting)

    return Server


def _guarded_app(app: Starlette, settings: Settings) -> Any:
    """``app`` (``create_app``'s) inside the bounds on slow bodies and on uploads per API key,
    counted by the app's own keys."""
    from imageproc.http import serving

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
