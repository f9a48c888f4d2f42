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

from services import health
from services.config import Settings
from services.counter import store as counter_store
from services.db import baselines as db_baselines
from services.db import ledger as db_ledger
from services.db import pool as db_pool
from services.flusher import metrics as flusher_metrics
from services.flusher.worker import Flusher

log = logging.getLogger("viewcounter.flusher")

FSYNC_TIMEOUT_S = 3.0


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the flusher's own stop event."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(
    flusher: Flusher, store: counter_store.CounterStore, pool: db_pool.Pool
) -> Starlette:
    """/healthz (the process answers), /readyz (Redis, Postgres, schema), /metrics."""

    async def healthz(request: Request) -> Response:
        body = {
            "status": "ok",
            "last_success": flusher.last_success,
            "flush_lag_seconds": round(flusher_metrics.flush_lag_s(), 3),
        }
        return JSONResponse(body)

    async def readyz(request: Request) -> Response:
        probe = await health.probe(store, pool)
        body = {"status": "ok" if probe.ready else "unavailable", "checks": probe.checks}
        return JSONResponse(body, status_code=200 if probe.ready else 503)

    async def metrics(request: Request) -> Response:
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

    redis = counter_store.connect(
        settings.redis_url,
        max_connections=8,
        timeout_s=max(settings.redis_timeout, FSYNC_TIMEOUT_S),
    )
    store = counter_store.CounterStore(redis, units=settings.shards)
    pool = await db_pool.connect_pool(
        settings.database_url, statement_timeout_s=settings.statement_timeout, max_size=4
    )
    flusher = Flusher(
        store,
        db_ledger.Ledger(pool),
        db_baselines.Baselines(pool),
        interval_s=settings.flush_interval,
        wait_fsync=settings.snapshot_fsync == "wait",
        lease_s=settings.flush_lease,
    )
    flusher_metrics.FLUSH_INTERVAL.set(settings.flush_interval)
    # Up first, so /healthz answers (and /readyz says why not ready) during the start-up wait.
    server = _QuietServer(
        uvicorn.Config(
            health_app(flusher, store, pool),
            host="0.0.0.0",
            port=settings.metrics_port,
            log_level="warning",
            log_config=None,
            lifespan="off",
        )
    )
    health_task = asyncio.create_task(server.serve(), name="flusher-health")

    async def redis_ready() -> None:
        await store.ping()
        await store.refuse_eviction()
        await store.check_layout()

    try:
        checks = {"redis": redis_ready, "postgres": lambda: health.check_migrations(pool)}
        try:
            if not await health.wait_for(checks, settings.startup_timeout, stop):
                log.info("flusher stopped before it started")
                return 0
        except health.StartupFailed as exc:
            log.error("flusher not started: %s", exc, extra={"error": str(exc)})
            return 1
        except counter_store.UnsafeRedis as exc:
            log.error("flusher not started: %s", exc, extra={"error": str(exc)})
            return 2
        log.info("flusher started", extra={"owner": flusher.owner})
        await flusher.run(stop)
        log.info("flusher stopped")
        return 0
    finally:
        server.should_exit = True
        await health_task
        await pool.close()
        await store.close()
