"""`POST /v1/sites/{site}/hits`, `GET /v1/sites/{site}/counts` and `GET /v1/sites/{site}/stats`
answered in one raw ASGI layer in front of the whole app.

The hit is the hot path, and the counts and stats reads the widget's. Through the middleware stack
(ServerErrorMiddleware, RequestTelemetry, BodyLimit, SiteCors, ExceptionMiddleware, FastAPI's
exit stack, routing over every route) and Starlette's Request/Response objects, a hit costs
several times the counting work (docs/benchmarks.md has the profiles). For these two routes this
layer does exactly what those layers do, in the same order and with the same answers:

1. telemetry: the request id (kept or made, echoed last in the answer's headers, set for log
   lines), the latency histogram under the route template, `rejected` for hits answered
   4xx/5xx;
2. the body cap by Content-Length (413, no CORS headers), then while reading (413, with them);
3. the site's origin check (403 with `Vary: Origin`) and the CORS headers of site_cors.py;
4. the endpoint of hits.py: site id, body (hit_body.parse), bot check, the count, the JSON;
   for counts: site id, `page` query parameters, the read, the JSON (the body is not read);
   for stats: site id, the read, the JSON.

Known failures get errors.py's JSON answers; a bug gets its JSON 500 (without CORS headers or
request id, as ServerErrorMiddleware gives it) and is raised to the server, which logs it.
Every other request (other methods, HEAD included, and any request without the lifespan's
state) goes to the app unchanged; the Starlette routes in hits.py stay for them and the
OpenAPI document lists the routes.
"""

from __future__ import annotations

import re
import time
from typing import Final
from urllib.parse import parse_qsl, unquote

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services import logs, metrics
from services.api import errors, hit_body, hits, site_cors, telemetry
from services.api.body_limit import BodyTooLarge
from services.counter import ids
from services.counting.live import LiveCounts

PUBLIC_PATH: Final = re.compile(r"/v1/sites/([^/]+)/(hits|counts|stats)")
HITS: Final = "hits"
STATS: Final = "stats"
# (method, last path segment) answered here: the route template telemetry records.
ROUTES: Final = {
    ("POST", HITS): "/v1/sites/{site}/hits",
    ("GET", "counts"): "/v1/sites/{site}/counts",
    ("GET", STATS): "/v1/sites/{site}/stats",
}
_JSON_HEADERS: Final = [
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in hits.NO_STORE.items()
]
_CONTENT_TYPE: Final = (b"content-type", b"application/json")
_ANY_ORIGIN: Final = b"*"
_VARY_ORIGIN: Final = (b"vary", b"Origin")


class _Headers:
    """The first value of each request header the hit reads (latin-1, as Starlette decodes)."""

    __slots__ = ("content_type", "content_length", "user_agent", "origin", "referer")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_type: str | None = None
        self.content_length: bytes | None = None
        self.user_agent: str | None = None
        self.origin: bytes | None = None
        self.referer: str | None = None
        for name, value in raw:
            if name == b"content-type":
                if self.content_type is None:
                    self.content_type = value.decode("latin-1")
            elif name == b"content-length":
                if self.content_length is None:
                    self.content_length = value
            elif name == b"user-agent":
                if self.user_agent is None:
                    self.user_agent = value.decode("latin-1")
            elif name == b"origin":
                if self.origin is None:
                    self.origin = value
            elif name == b"referer" and self.referer is None:
                self.referer = value.decode("latin-1")


class HitFastPath:
    """ASGI layer answering hits and counts reads itself; `limit` is
    VIEWCOUNTER_MAX_BODY_BYTES."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            PUBLIC_PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and not scope.get("root_path")
            else None
        )
        template = ROUTES.get((scope["method"], match.group(2))) if match else None
        live: LiveCounts | None = scope.get("state", {}).get("live") if template else None
        if match is None or template is None or live is None:
            await self.app(scope, receive, send)
            return
        raw_site, kind = match.group(1), match.group(2)
        request_id = telemetry.request_id(scope["headers"])
        token = logs.REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            status = await self._answer(scope, receive, send, live, raw_site, kind, request_id)
        finally:
            elapsed_s = time.perf_counter() - started
            telemetry.observe_latency(template, scope["method"], status, elapsed_s)
            if status >= 400 and kind == HITS:
                metrics.count_rejected_hit(await telemetry.registered_site(live, raw_site))
            logs.REQUEST_ID.reset(token)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        live: LiveCounts,
        raw_site: str,
        kind: str,
        request_id: str,
    ) -> int:
        """Answer the hit or the read; the status answered."""
        id_header = (telemetry.REQUEST_ID_HEADER, request_id.encode("ascii"))
        headers = _Headers(scope["headers"])
        length = headers.content_length
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            err = BodyTooLarge(self.limit)
            refusal = errors.error_response(err.status, err.code, err.message, err.field)
            await _send(send, refusal, [id_header])
            return err.status
        cors: list[tuple[bytes, bytes]] = []
        raw_origin = headers.origin
        origin = site_cors.origin_of(
            None if raw_origin is None else raw_origin.decode("latin-1"), headers.referer
        )
        if origin is not None:
            allowed = await site_cors.allowed_origins(live, unquote(raw_site))
            if allowed and origin not in allowed:
                await _send(send, site_cors.refusal(origin), [id_header])
                return 403
            if raw_origin is not None:  # Referer-only requests get no CORS headers
                cors.append(
                    (b"access-control-allow-origin", raw_origin if allowed else _ANY_ORIGIN)
                )
                if allowed:
                    cors.append(_VARY_ORIGIN)
        try:
            site = ids.site_id(raw_site)
            if kind == HITS:
                body = await self._hit(scope, receive, headers, live, site)
            elif kind == STATS:
                body = await hits.stats_answer(live, site)
            else:
                query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                body = await hits.counts_answer(live, site, [v for k, v in query if k == "page"])
        except Exception as exc:
            response = errors.answer(exc)
            if not errors.is_known(exc):
                await _send(send, response, [])
                raise
            await _send(send, response, [*cors, id_header])
            return response.status_code
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *_JSON_HEADERS,
                    (b"content-length", str(len(body)).encode("latin-1")),
                    _CONTENT_TYPE,
                    *cors,
                    id_header,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return 200

    async def _hit(
        self, scope: Scope, receive: Receive, headers: _Headers, live: LiveCounts, site: str
    ) -> bytes:
        """Take the hit in the request's body; the JSON answer."""
        hit = hit_body.parse(headers.content_type, await self._body(receive))
        client = scope.get("client")
        ip = client[0] if client else ""
        return await hits.answer_hit(live, site, hit, ip, headers.user_agent or "")

    async def _body(self, receive: Receive) -> bytes:
        """The request body; BodyTooLarge past the limit, ClientDisconnect if the client left."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()


async def _send(send: Send, response: Response, extra: list[tuple[bytes, bytes]]) -> None:
    """Send a (small, complete) Starlette response with `extra` headers appended."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [*response.raw_headers, *extra],
        }
    )
    await send({"type": "http.response.body", "body": response.body})
