"""The flusher process: signals, clients, the health/metrics endpoint, and the flush loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services import clients, health
from services.config import Settings
from services.counter import startup
from services.counter.client import Client
from services.counter.errors import CounterUnavailable, UnsafeRedis
from services.counter.flushstore import FlushStore
from services.db import pool as db_pool
from services.flusher import metrics as flusher_metrics
from services.flusher.worker import Flusher

log = logging.getLogger("viewcounter.flusher")

WATCH_TIMEOUT_S = 2.0  # the work index's read at a scrape waits at most this long


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the flusher's own stop event."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(
    flusher: Flusher, redis: Client, pool: db_pool.Pool, store: FlushStore | None = None
) -> Starlette:
    """/healthz (the process answers), /readyz (Redis, Postgres, schema, and its passes are
    not failing: see UNREADY_AFTER_FAILED_PASSES), /metrics (with `store`, the age of the
    oldest unflushed unit per node read from Redis at each scrape)."""

    async def healthz(request: Request) -> Response:
        body = {
            "status": "ok",
            "last_success": flusher.last_success,
            "flush_lag_seconds": round(flusher_metrics.flush_lag_s(), 3),
        }
        return JSONResponse(body)

    async def readyz(request: Request) -> Response:
        probe = await health.probe(redis, pool)
        # Postgres may answer a probe while every write fails (a full disk): the passes tell.
        probe.checks["flush_passes"] = flusher.passes_check()
        body = {"status": "ok" if probe.ready else "unavailable", "checks": probe.checks}
        return JSONResponse(body, status_code=200 if probe.ready else 503)

    async def metrics(request: Request) -> Response:
        if store is not None:
            try:
                # Bounded: a scrape must answer even when a node does not.
                ages = await asyncio.wait_for(store.oldest_work(), WATCH_TIMEOUT_S)
            except (CounterUnavailable, TimeoutError) as exc:
                log.warning("work index not read: %s", exc, extra={"error": str(exc)})
            else:
                flusher_metrics.unflushed_ages(ages)
        return Response(flusher_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


async def serve(settings: Settings) -> int:
    """Run the flusher until SIGTERM/SIGINT; exit code 0 after a clean final flush, 1 when
    its dependencies stay unavailable through the start-up wait, 2 on an unsafe Redis."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    opened = await clients.connect(settings, clients.FLUSHER)
    pool = opened.db.pool
    flusher = Flusher(
        opened.flush,
        opened.baselines,
        opened.db.ledger,
        opened.db.baselines,
        interval_s=settings.flush_interval,
        wait_fsync=settings.snapshot_fsync == "wait",
        lease_s=settings.flush_lease,
    )
    flusher_metrics.FLUSH_INTERVAL.set(settings.flush_interval)
    # Up first, so /healthz answers (and /readyz says why not ready) during the start-up wait.
    server = _QuietServer(
        uvicorn.Config(
            health_app(flusher, opened.redis, pool, opened.flush),
            host="0.0.0.0",
            port=settings.metrics_port,
            log_level="warning",
            log_config=None,
            lifespan="off",
        )
    )
    health_task = asyncio.create_task(server.serve(), name="flusher-health")

    async def redis_ready() -> None:
        await startup.ping(opened.redis)
        await startup.refuse_eviction(opened.redis)
        await startup.check_layout(opened.redis, settings.shards)

    try:
        checks = {"redis": redis_ready, "postgres": lambda: health.check_migrations(pool)}
        try:
            if not await health.wait_for(checks, settings.startup_timeout, stop):
                log.info("flusher stopped before it started")
                return 0
        except health.StartupFailed as exc:
            log.error("flusher not started: %s", exc, extra={"error": str(exc)})
            return 1
        except UnsafeRedis as exc:
            log.error("flusher not started: %s", exc, extra={"error": str(exc)})
            return 2
        log.info("flusher started", extra={"owner": flusher.owner})
        await flusher.run(stop)
        log.info("flusher stopped")
        return 0
    finally:
        server.should_exit = True
        await health_task
        await opened.aclose()
