"""The FastAPI application: `create_app(settings)` with a lifespan that owns every client."""

from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
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
    top,
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
from services.counting.top import MostRead

log = logging.getLogger("viewcounter.api")
# Each request leaves short-lived cycles (tasks, futures, frames): collect the young
# generation less often than the default 700 allocations.
GC_THRESHOLDS = (10_000, 20, 20)
# /docs loads Swagger UI from here, never from a CDN: it works on intranets without the
# internet. The files come from the fastapi-offline package (Swagger UI 5, which renders the
# OpenAPI 3.1 document FastAPI writes; swagger-ui-bundle's Swagger UI 4 refuses it).
DOCS_ASSETS_PATH = "/docs-assets"
DOCS_ASSETS_DIR = resources.files("fastapi_offline") / "static"


class ViewcounterApp(FastAPI):
    """FastAPI with the hit fast path outside its whole middleware stack."""

    max_body_bytes = 0

    def build_middleware_stack(self) -> ASGIApp:
        """The stack Starlette builds (ServerErrorMiddleware outermost), behind HitFastPath."""
        return HitFastPath(super().build_middleware_stack(), limit=self.max_body_bytes)


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> FastAPI:
    """The API wired to Redis and Postgres from `settings`; `clock` (seconds since the epoch)
    decides the minute of rate limits and the sites' local days."""

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
            # Everything alive now (modules, routes, clients) lives as long as the process:
            # keep the collector from walking it again on every full collection.
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            live = LiveCounts(
                opened.hits,
                opened.db.sites,
                dedupe_window_s=settings.dedupe_window,
                rate_limit_per_min=settings.rate_limit,
                max_pages_per_site=settings.max_pages_per_site,
                clock=clock,
            )
            yield State(
                settings=settings,
                redis=opened.redis,
                pool=opened.db.pool,
                baseline_store=opened.baselines,
                baselines=opened.db.baselines,
                reports=opened.db.reports,
                live=live,
                titles=opened.db.titles,
                top=MostRead(live, opened.pending, opened.db.top, opened.db.titles, clock=clock),
            )
        finally:
            await opened.aclose()

    app = ViewcounterApp(
        title="viewcounter",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by _serve_docs, from local files
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look at the environment on every request; we export
        # Prometheus metrics instead, and the hit path cannot afford the lookups.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # POST /v1/sites/{site}/hits is answered in front of all of this: hit_fast_path.py.
    app.max_body_bytes = settings.max_body_bytes
    errors.install(app)
    public_schema.install(app)
    _serve_docs(app)
    app.router.routes.extend(hits.routes)
    app.router.routes.extend(top.routes)
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


def _serve_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and its OAuth2 redirect page, with every asset served by the app."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(DOCS_ASSETS_DIR)), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(redirect_url, oauth2_redirect, methods=["GET"], include_in_schema=False)


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
