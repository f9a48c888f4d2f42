"""The real api plus `POST /bench/noop`: a baseline sharing its server, middleware, body read.

Served by uvicorn as `bench.noop_app:create_bench_app --factory`; the benchmark sends hits and
no-ops to the same process, so the difference between the two is the hit path itself: routing
with a path parameter, body parsing and validation, the Redis round trip, and the
JSON answer.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api.app import create_app_from_env

NOOP_PATH = "/bench/noop"
NOOP_BODY = b'{"ok":true}'


def create_bench_app() -> FastAPI:
    """The app uvicorn workers build: settings from VIEWCOUNTER_* like the real api."""
    app = create_app_from_env()
    # A plain Starlette route, like the hit routes: the leanest endpoint this server can have.
    app.router.routes.append(Route(NOOP_PATH, bench_noop, methods=["POST"]))
    return app


async def bench_noop(request: Request) -> Response:
    """Read the body, answer a constant."""
    await request.body()
    return Response(NOOP_BODY, media_type="application/json")
