"""Per-request telemetry as one pure-ASGI middleware: request id, latency, refused hits, access log.

It sits outside every other middleware, so it times and sees what the client gets, including
answers given before routing (CORS refusals, oversized bodies). It costs a header scan, a
context variable, one histogram observation and a wrapped `send` per request.

- **Request id.** An incoming `X-Request-Id` of 1-128 visible ASCII characters is kept; any
  other (or none) is replaced by `<process prefix>-<counter>`, unique per process and, by its
  random prefix, across processes. It is echoed in the answer and put into every log line of
  the request (`services.logs.REQUEST_ID`).
- **Latency** by route template (never the raw path), method and status class. Requests that
  match no route are `route="unmatched"`.
- **Refused hits**: a hit route answered 4xx/5xx counts as outcome `rejected`, labelled
  with its site when that is a registered site (else `_other`).
- **Access log** at debug level only: method, route, status, duration, request id. Never the
  client's address or any visitor id.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from typing import Final

from prometheus_client import Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services import logs, metrics
from services.api import hits
from services.counter import ids
from services.counting.live import LiveCounts

log = logging.getLogger("viewcounter.access")

REQUEST_ID_HEADER: Final = b"x-request-id"
_VALID_REQUEST_ID: Final = re.compile(rb"[\x21-\x7e]{1,128}")
UNMATCHED_ROUTE: Final = "unmatched"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# (method, route template) of the routes that take hits.
HIT_ROUTES: Final = frozenset(
    (method, str(getattr(route, "path", "")))
    for route in hits.routes
    if getattr(route, "endpoint", None) in (hits.post_hit, hits.pixel_hit)
    for method in (getattr(route, "methods", None) or ())
    if method != "HEAD"  # HEAD on the pixel is never a page view
)


class _RequestIds:
    """`<prefix>-<hex counter>`: one random prefix per process (also in a forked child)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._ids = itertools.count(1)

    def next(self) -> str:
        if self._pid != os.getpid():
            self._pid, self._prefix = os.getpid(), secrets.token_hex(4)
        return f"{self._prefix}-{next(self._ids):x}"


# Shared by every app of the process: the hit fast path (hit_fast_path.py) and this middleware
# hand out ids with the same prefix.
_REQUEST_IDS: Final = _RequestIds()
_LATENCY: dict[tuple[str, str, int], Histogram] = {}


def request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The request's valid incoming X-Request-Id, else a new id of this process."""
    return _incoming_id(headers) or _REQUEST_IDS.next()


def observe_latency(template: str, method: str, status: int, elapsed_s: float) -> None:
    """Record one answer's latency under its route template, method and status class."""
    key = (template, method, status // 100)
    histogram = _LATENCY.get(key)
    if histogram is None:
        status_class = _STATUS_CLASSES.get(status // 100, "other")
        histogram = metrics.REQUEST_DURATION.labels(template, method, status_class)
        _LATENCY[key] = histogram
    histogram.observe(elapsed_s)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "request",
            extra={
                "method": method,
                "route": template,
                "status": status,
                "duration_ms": round(elapsed_s * 1000, 3),
            },
        )


class RequestTelemetry:
    """ASGI middleware; `routes` is the app's route list (read when a request was answered
    before routing, to still name its route)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope["headers"]) or _REQUEST_IDS.next()
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500  # what the client gets when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        token = logs.REQUEST_ID.set(request_id)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route, template, method = self._observe(scope, status, time.perf_counter() - started)
            if status >= 400 and (method, template) in HIT_ROUTES:
                metrics.count_rejected_hit(await _registered_site(scope, route))
            logs.REQUEST_ID.reset(token)

    def _observe(
        self, scope: Scope, status: int, elapsed_s: float
    ) -> tuple[BaseRoute | None, str, str]:
        """Record latency (and the access log line); the route, its template and the method."""
        route: BaseRoute | None = scope.get("route")  # set by the router when a route matched
        template: str | None = getattr(route, "path", None)
        if template is None:
            route, template = self._match(scope)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        observe_latency(template, method, status, elapsed_s)
        return route, template, method

    def _match(self, scope: Scope) -> tuple[BaseRoute | None, str]:
        """The route a request answered before routing would have gone to, and its template."""
        for route in self._routes:
            if route.matches(scope)[0] is not Match.NONE:
                return route, str(getattr(route, "path", UNMATCHED_ROUTE))
        return None, UNMATCHED_ROUTE


async def _registered_site(scope: Scope, route: BaseRoute | None) -> str | None:
    """The site of a refused hit when it is a registered one (from the same cached settings
    the hit path reads), else None: refused requests must not create label values."""
    params = scope.get("path_params") if scope.get("route") is route else None
    if params is None and route is not None:
        params = route.matches(scope)[1].get("path_params")
    return await registered_site(scope.get("state", {}).get("live"), (params or {}).get("site"))


async def registered_site(live: LiveCounts | None, raw: object) -> str | None:
    """`raw` when it names a registered site, else None (unknown, invalid, or Redis/Postgres
    unreachable): refused requests must not create label values."""
    if not isinstance(raw, str) or live is None:
        return None
    try:
        site = ids.site_id(raw)
        await live.site_config(site)
    except Exception:  # unknown, invalid, or Redis/Postgres unreachable: not a label value
        return None
    return site


def _incoming_id(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return value.decode("ascii") if _VALID_REQUEST_ID.fullmatch(value) else None
    return None
