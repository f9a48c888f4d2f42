"""The website side: GET /v1/counter.js, and the routes of the badge and the stream.

counter.js is read once from the package, hashed and gzipped at import. `/v1/counter.js`
is cached briefly and revalidated by ETag, so a site that embeds the plain URL picks up a new
version within SCRIPT_MAX_AGE_S; `/v1/counter.js?v=HASH` (HASH as in the ETag and the `Link`
header) is cached for a year, since that URL always names the same bytes. Any other `v` gets
the current script with the short lifetime, so a stale link never pins the wrong version.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.api import badge, stream
from services.config import Settings

SCRIPT_PATH = "/v1/counter.js"
SCRIPT_MAX_AGE_S = 600
VERSIONED_MAX_AGE_S = 365 * 86400

SCRIPT = resources.files("services.api").joinpath("static/counter.js").read_bytes()
SCRIPT_GZIP = gzip.compress(SCRIPT, compresslevel=9, mtime=0)
SCRIPT_VERSION = hashlib.sha256(SCRIPT).hexdigest()[:16]
# Weak: the gzip and identity bytes are the same script.
SCRIPT_ETAG = f'W/"{SCRIPT_VERSION}"'
_COMMON_HEADERS = {
    "ETag": SCRIPT_ETAG,
    "Vary": "Accept-Encoding",
    "X-Content-Type-Options": "nosniff",
    # Lets sites that set Cross-Origin-Embedder-Policy: require-corp load it too.
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Link": f'<{SCRIPT_PATH}?v={SCRIPT_VERSION}>; rel="canonical"',
}


def _etag_matches(if_none_match: str | None) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or f'"{SCRIPT_VERSION}"' in tags


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


async def counter_js(request: Request) -> Response:
    """The widget script, cacheable: long on the versioned URL, short (with ETag) otherwise."""
    versioned = request.query_params.get("v") == SCRIPT_VERSION
    max_age = VERSIONED_MAX_AGE_S if versioned else SCRIPT_MAX_AGE_S
    headers = dict(_COMMON_HEADERS)
    headers["Cache-Control"] = f"public, max-age={max_age}" + (", immutable" if versioned else "")
    if _etag_matches(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    body = SCRIPT
    if _accepts_gzip(request.headers.get("accept-encoding", "")):
        body = SCRIPT_GZIP
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="text/javascript", headers=headers)


def routes(settings: Settings) -> list[BaseRoute]:
    """The widget's routes, with one stream hub (bounded by the settings) for this app."""
    hub = stream.StreamHub(max_streams=settings.stream_max_connections)
    return [
        Route(SCRIPT_PATH, counter_js, methods=["GET"]),
        Route("/v1/sites/{site}/badge.svg", badge.badge, methods=["GET"]),
        Route("/v1/sites/{site}/stream", hub.endpoint, methods=["GET"]),
    ]
