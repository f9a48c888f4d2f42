"""CORS per site: a web page may send hits and read counts only from the site's origins.

A site with no `allowed_origins` accepts any page (answers `Access-Control-Allow-Origin: *`;
no cookies are involved, so that exposes nothing private). A site with a list refuses, with
403 and nothing counted, any request whose Origin (or, where browsers send none, as for an
`<img>` pixel, the origin of its Referer) is not on it, and echoes allowed origins back.
Only the public counting routes take part; admin and ops routes never answer CORS.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_response
from services.counter import ids
from services.counter.errors import CounterUnavailable
from services.counting.live import LiveCounts, UnknownSite
from services.db import errors as db_errors

PUBLIC_PATH = re.compile(r"/v1/sites/([^/]+)/(?:hits|hit\.gif|counts|stats|top|badge\.svg|stream)")
ALLOW_METHODS = "GET, POST"
ALLOW_HEADERS = "content-type"
PREFLIGHT_MAX_AGE_S = "86400"


def request_origin(headers: Headers) -> str | None:
    """The Origin header, else the origin of the Referer, else None."""
    return origin_of(headers.get("origin"), headers.get("referer"))


def origin_of(origin: str | None, referer: str | None) -> str | None:
    """The origin a request comes from, given its Origin and Referer headers (None: absent)."""
    if origin is not None:
        return origin.strip().lower()
    if not referer:
        return None
    try:
        parts = urlsplit(referer)
        port = parts.port
    except ValueError:
        return "null"
    if not parts.scheme or not parts.hostname:
        return "null"
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = parts.hostname if port in (None, default) else f"{parts.hostname}:{port}"
    return f"{parts.scheme.lower()}://{netloc.lower()}"


class SiteCors:
    """ASGI middleware answering preflights and checking origins of public routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PUBLIC_PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = request_origin(headers)
        if origin is None:  # not from a browser page: nothing to check or answer
            await self.app(scope, receive, send)
            return
        allowed_list = await allowed_origins(
            scope.get("state", {}).get("live"), unquote(match.group(1))
        )
        if allowed_list and origin not in allowed_list:
            await refusal(origin)(scope, receive, send)
            return
        if "origin" not in headers:
            # Referer-only requests (a pixel) get no CORS headers: nobody reads them.
            await self.app(scope, receive, send)
            return
        allow = {"Access-Control-Allow-Origin": headers["origin"] if allowed_list else "*"}
        if allowed_list:
            allow["Vary"] = "Origin"
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = Response(
                status_code=204,
                headers={
                    **allow,
                    "Access-Control-Allow-Methods": ALLOW_METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
                },
            )
            await preflight(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in allow.items():
                    if name == "Vary":
                        response_headers.add_vary_header("Origin")
                    else:
                        response_headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_cors)


def refusal(origin: str) -> Response:
    """The 403 answer to a request from an origin the site does not allow."""
    return error_response(
        403,
        "origin_not_allowed",
        f"origin {origin[:100]} may not use this site's counter",
        "origin",
        headers={"Vary": "Origin"},
    )


async def allowed_origins(live: LiveCounts | None, raw_site: str) -> tuple[str, ...]:
    """The site's allowed origins; empty (any) when the route will refuse the request
    anyway (bad or unknown site, Redis down): the route gives the precise error."""
    if live is None:
        return ()
    try:
        config = await live.site_config(ids.site_id(raw_site))
    except (
        ids.InvalidId,
        UnknownSite,
        CounterUnavailable,
        db_errors.DatabaseUnavailable,
    ):
        return ()
    return config.allowed_origins
