"""Running the api as a process: metrics across workers and their listener, the start-up
wait, a graceful stop.

This module must not import prometheus_client (directly or through services.metrics) at
import time: the metrics directory has to be in the environment, and emptied, before any
process that serves metrics imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.config import Settings

log = logging.getLogger("viewcounter.api")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(workers: int) -> Callable[[], None]:
    """Set up prometheus-client's multiprocess mode when there are several workers (or the
    user asked for it by setting PROMETHEUS_MULTIPROC_DIR); returns the clean-up to run on exit.

    A directory given by the user is kept but emptied of metric files of earlier runs (counters
    would otherwise carry on from them); without one, several workers share a new temporary
    directory, removed on exit.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        log.info("metrics of all workers merged through %s", path)
        return lambda: None
    if workers == 1:
        return lambda: None
    created = Path(tempfile.mkdtemp(prefix="viewcounter-metrics-"))
    os.environ[MULTIPROC_ENV] = str(created)
    log.info("metrics of %d workers merged through %s", workers, created)
    return lambda: shutil.rmtree(created, ignore_errors=True)


async def wait_for_redis(settings: Settings) -> bool:
    """Wait (bounded by startup_timeout) until Redis answers and is safe to count in; then
    check Postgres and the schema once. False when Redis is still unreachable: the api serves
    anyway, answering hits 503 until Redis is back.

    Raises UnsafeRedis when Redis would evict unflushed counts.
    """
    from services import clients, health
    from services.counter import startup
    from services.db import errors as db_errors

    opened = await clients.connect(settings, clients.API_STARTUP)
    try:

        async def redis_ready() -> None:
            await startup.ping(opened.redis)
            await startup.refuse_eviction(opened.redis)
            await startup.check_layout(opened.redis, settings.shards)

        try:
            await health.wait_for({"redis": redis_ready}, settings.startup_timeout)
        except health.StartupFailed as exc:
            log.warning("%s; serving anyway: hits answer 503 until Redis is reachable", exc)
            return False
        try:
            await health.check_migrations(opened.db.pool)
        except (db_errors.DatabaseUnavailable, health.SchemaBehind) as exc:
            log.warning(
                "postgres not ready at start (hits are counted; admin and reports fail): %s",
                exc,
                extra={"error": str(exc)},
            )
        return True
    finally:
        await opened.aclose()


def run(settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve the api until SIGTERM/SIGINT; requests in flight then get shutdown_timeout s."""
    import uvicorn

    cleanup = prepare_metrics_dir(workers)
    # Only now: these import prometheus_client, which reads the environment set just above.
    from services.api import ops_listener
    from services.api.app import server_options
    from services.counter.errors import UnsafeRedis

    listener: ops_listener.OpsListener | None = None
    try:
        if settings.api_metrics_port:
            # Up first, so the readiness checks say what the start-up wait waits for.
            try:
                sock = ops_listener.bind(settings)
            except OSError as exc:
                log.error(
                    "refusing to start: the metrics listener cannot listen on %s:%d: %s",
                    settings.api_metrics_host,
                    settings.api_metrics_port,
                    exc,
                )
                return 2
            listener = ops_listener.OpsListener(settings, sock)
            listener.start()
        try:
            asyncio.run(wait_for_redis(settings))
        except UnsafeRedis as exc:
            log.error("refusing to start: %s", exc)
            return 2
        uvicorn.run(
            "services.api.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level,
            log_config=None,  # our JSON logs (services/logs.py), in every worker
            timeout_graceful_shutdown=int(settings.shutdown_timeout),
            **server_options(settings),  # type: ignore[arg-type]
        )
    finally:
        if listener is not None:
            listener.stop()
        cleanup()
    return 0
