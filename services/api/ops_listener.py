"""The api's metrics listener: /metrics and the /readyz checks, on a port of their own.

They name every hosted site and its traffic, and how Redis and Postgres are doing: nothing
for the public port, where every site's visitors (and editors) come. This listener is bound
to VIEWCOUNTER_API_METRICS_HOST (127.0.0.1 by default) and VIEWCOUNTER_API_METRICS_PORT (9102;
0: none); the public port keeps /healthz and a bare /readyz.

`viewcounter api` runs it in a thread of the process that starts uvicorn, with an event loop
and clients of its own. With one worker that is the worker's own process, so it reads the
worker's metrics; with several, uvicorn's supervisor, which reads every worker's metrics from
the multiprocess directory (services/metrics.py), merged, and answers even while a worker
restarts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services import clients, metrics
from services.api import ops
from services.config import Settings

log = logging.getLogger("viewcounter.api")


def create_ops_app(settings: Settings) -> Starlette:
    """/healthz, /readyz with its checks, and /metrics; opens its own Redis client and
    Postgres pool (a small one) for as long as it runs."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        opened = await clients.connect(settings, clients.API_OPS)
        try:
            yield {"redis": opened.redis, "pool": opened.db.pool}
        finally:
            await opened.aclose()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        status, code, checks = await ops.readiness(
            request.state.redis, request.state.pool, settings
        )
        return JSONResponse({"status": status, "checks": checks}, status_code=code)

    async def metrics_route(request: Request) -> Response:
        text = await ops.metrics_text(request.state.redis)
        return Response(text, media_type=metrics.CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def bind(settings: Settings) -> socket.socket:
    """The listening socket of the metrics listener (raises OSError when taken)."""
    host, port = settings.api_metrics_host, settings.api_metrics_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class OpsListener:
    """The metrics listener in a thread (its own event loop): `start()`, then `stop()`."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self._sock = sock
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_ops_app(settings),
                log_level="warning",
                log_config=None,
                access_log=False,
                server_header=False,
            )
        )
        self._thread = threading.Thread(target=self._run, name="api-metrics", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # SystemExit from uvicorn: a failed start
            log.error("the api's metrics listener stopped: %r", exc)

    def start(self) -> None:
        host, port = self._sock.getsockname()[:2]
        log.info("api metrics and readiness checks on http://%s:%d", host, port)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._sock.close()
