"""The FastAPI application: `create_app(settings)` with a lifespan that owns every client."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from services import clients, logs
from services.api import (
    batch,
    dashboard,
    errors,
    hits,
    imports,
    ops,
    public_schema,
    reports,
    sites,
    widget,
)
from services.api.body_limit import BodyLimit
from services.api.deps import State
from services.api.hit_fast_path import HitFastPath
from services.api.site_cors import SiteCors
from services.api.telemetry import RequestTelemetry
from services.config import Settings, load_settings
from services.counter import startup
from services.counter.errors import CounterUnavailable
from services.counting.live import LiveCounts

log = logging.getLogger("viewcounter.api")
# Each request leaves short-lived cycles (tasks, futures, frames): collect the young
# generation less often than the default 700 allocations.
GC_THRESHOLDS = (10_000, 20, 20)


class ViewcounterApp(FastAPI):
    """FastAPI with the hit fast path outside its whole middleware stack."""

    max_body_bytes = 0

    def build_middleware_stack(self) -> ASGIApp:
        """The stack Starlette builds (ServerErrorMiddleware outermost), behind HitFastPath."""
        return HitFastPath(super().build_middleware_stack(), limit=self.max_body_bytes)


def create_app(settings: Settings) -> FastAPI:
    """The API wired to Redis and Postgres from `settings`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        opened = await clients.connect(settings, clients.API)
        try:
            try:
                await startup.refuse_eviction(opened.redis)
                await startup.check_layout(opened.redis, settings.shards)
                await startup.register_scripts(opened.redis)
            except CounterUnavailable as exc:
                log.warning("redis not reachable at start; hits answer 503 until it is: %s", exc)
            repo = opened.repo
            # Everything alive now (modules, routes, clients) lives as long as the process:
            # keep the collector from walking it again on every full collection.
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            yield State(
                settings=settings,
                redis=opened.redis,
                baselines=opened.baselines,
                repo=repo,
                live=LiveCounts(
                    opened.hits,
                    repo,
                    dedupe_window_s=settings.dedupe_window,
                    rate_limit_per_min=settings.rate_limit,
                    max_pages_per_site=settings.max_pages_per_site,
                ),
            )
        finally:
            await opened.aclose()

    app = ViewcounterApp(
        title="viewcounter",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look at the environment on every request; we export
        # Prometheus metrics instead, and the hit path cannot afford the lookups.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # POST /v1/sites/{site}/hits is answered in front of all of this: hit_fast_path.py.
    app.max_body_bytes = settings.max_body_bytes
    errors.install(app)
    public_schema.install(app)
    app.router.routes.extend(hits.routes)
    app.router.routes.extend(batch.routes)
    app.router.routes.extend(widget.routes(settings))
    app.include_router(sites.router)
    app.include_router(ops.router)
    app.include_router(imports.router)
    app.include_router(reports.router)
    app.router.routes.extend(dashboard.routes)
    # Which web pages may send hits and read counts: each site's allowed origins.
    app.add_middleware(SiteCors)
    # The CSV import and the batch route read (and bound) their bodies themselves.
    streamed = re.compile(f"{imports.IMPORT_PATH.pattern}|{batch.BATCH_PATH.pattern}")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, unlimited=streamed)
    # Outermost: times and sees every answer, request ids in every log line.
    app.add_middleware(RequestTelemetry, routes=app.router.routes)
    return app


def server_options(settings: Settings) -> dict[str, object]:
    """uvicorn options that belong to the app's contract: whose forwarding headers to believe.

    uvicorn by default believes X-Forwarded-For from 127.0.0.1; we believe only the proxies
    in VIEWCOUNTER_TRUSTED_PROXIES, and otherwise take the client from the socket.
    """
    return {
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies) or "",
        "server_header": False,
        "access_log": False,
    }


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: each worker reads the environment once (and, being a
    process of its own, sets up its JSON logs)."""
    settings = load_settings()
    logs.setup(settings.log_level)
    return create_app(settings)
