"""GET /dashboard/{site} (and GET /dashboard, which asks for the site): a static page (HTML,
JS, CSS from the package; no build step, no CDN) that draws the report routes' answers, in
Vietnamese or English. It holds no data itself: the script asks for the site and its key (a
report or admin key), keeps them in sessionStorage (this tab only) and sends the key as a
bearer token to that site's report routes, which are what is protected; it never asks which
other sites exist. Served under a strict CSP: no inline code or styles, nothing from
elsewhere."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.counter import ids

_STATIC = resources.files("services.api").joinpath("static")
PAGE = _STATIC.joinpath("dashboard.html").read_bytes()
SCRIPT = _STATIC.joinpath("dashboard.js").read_bytes()
STYLE = _STATIC.joinpath("dashboard.css").read_bytes()
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def page(request: Request) -> Response:
    """The dashboard page of a site (the script reads the site from the path)."""
    ids.site_id(request.path_params["site"])
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=_HEADERS)


async def sign_in(request: Request) -> Response:
    """The dashboard page before a site is chosen: its sign-in asks for the site too."""
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=_HEADERS)


async def script(request: Request) -> Response:
    """The dashboard's script."""
    return Response(SCRIPT, media_type="text/javascript; charset=utf-8", headers=_HEADERS)


async def style(request: Request) -> Response:
    """The dashboard's style sheet."""
    return Response(STYLE, media_type="text/css; charset=utf-8", headers=_HEADERS)


routes: list[BaseRoute] = [
    Route("/dashboard", sign_in, methods=["GET"]),
    Route("/dashboard/{site}", page, methods=["GET"]),
    Route("/v1/dashboard.js", script, methods=["GET"]),
    Route("/v1/dashboard.css", style, methods=["GET"]),
]
