"""The real api plus three no-op baselines, served together for bench/run.py.

Served by uvicorn as `bench.noop_app:create_bench_app --factory`. The factory returns
`BenchApp`: a raw ASGI callable in front of the real FastAPI app (settings from VIEWCOUNTER_*,
lifespan and all). Every no-op reads the request body and answers the same fixed JSON
(`{"ok":true}`, 200, content-type and content-length headers only); they differ only in how much
of the server's stack a request crosses before reaching them:

- `POST /bench/noop` (`fastapi-noop`): an ordinary FastAPI route (`@app.post`), so FastAPI's
  request handler (dependency solving for the `Request` parameter) runs on top of routing and
  the whole middleware stack. The product's issue defines its target against this one: "a
  no-op endpoint served by the same server settings".
- `POST /bench/noop-lean` (`lean-noop`): a plain Starlette `Route` appended to
  `app.router.routes`, exactly like the real hit route: the middleware stack and routing, no
  FastAPI request handler. The leanest endpoint inside the app.
- `POST /bench/bare` (`bare-noop`): answered by `BenchApp` itself before the FastAPI app is
  called: no middleware (ServerErrorMiddleware, BodyLimit, CORS, ExceptionMiddleware,
  FastAPI's own), no routing, no Request/Response objects. What is left is uvicorn (httptools
  parsing, its proxy-headers wrapper, which it puts around any app) and the ASGI messages.

Everything else, `lifespan` included, goes to the FastAPI app unchanged, so the hit route
`POST /v1/sites/{site}/hits` is the product's own, with its Redis and Postgres clients.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.api.app import create_app_from_env

FASTAPI_NOOP_PATH = "/bench/noop"
LEAN_NOOP_PATH = "/bench/noop-lean"
BARE_NOOP_PATH = "/bench/bare"
NOOP_BODY = b'{"ok":true}'
# The headers a Starlette Response(NOOP_BODY, media_type="application/json") sends.
_BARE_HEADERS = [
    (b"content-length", str(len(NOOP_BODY)).encode("ascii")),
    (b"content-type", b"application/json"),
]


def create_bench_app() -> BenchApp:
    """The app uvicorn workers build: the real api with the no-op routes, behind `BenchApp`."""
    app = create_app_from_env()
    app.post(FASTAPI_NOOP_PATH, include_in_schema=False)(fastapi_noop)
    app.router.routes.append(Route(LEAN_NOOP_PATH, lean_noop, methods=["POST"]))
    return BenchApp(app)


async def fastapi_noop(request: Request) -> Response:
    """FastAPI route: read the body, answer a constant."""
    await request.body()
    return Response(NOOP_BODY, media_type="application/json")


async def lean_noop(request: Request) -> Response:
    """Starlette route: read the body, answer a constant."""
    await request.body()
    return Response(NOOP_BODY, media_type="application/json")


class BenchApp:
    """Answer `POST /bench/bare` itself; pass every other scope (lifespan too) to `app`."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == BARE_NOOP_PATH
            and scope["method"] == "POST"
        ):
            await self._bare(receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    async def _bare(receive: Receive, send: Send) -> None:
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more_body = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": _BARE_HEADERS})
        await send({"type": "http.response.body", "body": NOOP_BODY})
