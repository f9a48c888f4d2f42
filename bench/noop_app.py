"""The real api plus `POST /bench/noop`: a baseline sharing its server, middleware, body read.

Served by uvicorn as `bench.noop_app:create_bench_app --factory`; the benchmark sends hits and
no-ops to the same process, so the difference between the two is the hit path itself: routing
with path parameter and dependency, body parsing and validation, the Redis round trip, and the
JSON answer.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from services.api.app import create_app_from_env

NOOP_PATH = "/bench/noop"
NOOP_BODY = b'{"ok":true}'


def create_bench_app() -> FastAPI:
    """The app uvicorn workers build: settings from VIEWCOUNTER_* like the real api."""
    app = create_app_from_env()

    @app.post(NOOP_PATH, include_in_schema=False)
    async def bench_noop(request: Request) -> Response:
        await request.body()
        return Response(NOOP_BODY, media_type="application/json")

    return app
