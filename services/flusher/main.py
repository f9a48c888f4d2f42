"""The flusher process: signals, clients, the health/metrics endpoint, and the flush loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.config import Settings
from services.counter import store as counter_store
from services.db import repository
from services.flusher.worker import Flusher

log = logging.getLogger("viewcounter.flusher")

FSYNC_TIMEOUT_S = 3.0


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the flusher's own stop event."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(flusher: Flusher, interval_s: float) -> Starlette:
    """/healthz (the loop is alive and flushed recently), /metrics (Prometheus text)."""

    async def healthz(request: Request) -> Response:
        last = flusher.last_success
        now = time.time()
        stale = last is None or now - last > max(60.0, 10 * interval_s)
        body = {"status": "stale" if stale else "ok", "last_success": last}
        return JSONResponse(body, status_code=503 if stale and last is not None else 200)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics)])


async def serve(settings: Settings) -> int:
    """Run the flusher until SIGTERM/SIGINT; exit code 0 after a clean final flush."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    redis = counter_store.connect(
        settings.redis_url,
        max_connections=8,
        timeout_s=max(settings.redis_timeout, FSYNC_TIMEOUT_S),
    )
    store = counter_store.CounterStore(redis)
    pool = await repository.connect_pool(
        settings.database_url, statement_timeout_s=settings.statement_timeout, max_size=4
    )
    flusher = Flusher(
        store,
        repository.Repository(pool),
        interval_s=settings.flush_interval,
        wait_fsync=settings.snapshot_fsync == "wait",
        lease_s=settings.flush_lease,
    )
    server = _QuietServer(
        uvicorn.Config(
            health_app(flusher, settings.flush_interval),
            host="0.0.0.0",
            port=settings.metrics_port,
            log_level="warning",
            lifespan="off",
        )
    )
    health_task = asyncio.create_task(server.serve(), name="flusher-health")
    try:
        with contextlib.suppress(counter_store.CounterUnavailable):
            await store.refuse_eviction()
        log.info("flusher started", extra={"owner": flusher.owner})
        await flusher.run(stop)
        log.info("flusher stopped")
        return 0
    finally:
        server.should_exit = True
        await health_task
        await pool.close()
        await store.close()
