"""Public counting routes: the hit (JSON or pixel), the live counts read and the statistics
block.

These are plain Starlette endpoints (added to the FastAPI app as routes): the hit path is the
hot path, and FastAPI's per-request dependency and parameter machinery cost more than the whole
counting work. They parse their own input; public_schema.py describes them for /docs.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services import metrics
from services.api import hit_body
from services.api.errors import ApiError
from services.counter import ids
from services.counter.outcomes import Outcome
from services.counting import stats
from services.counting.live import LiveCounts

MAX_PAGES_PER_READ = 100
# The smallest transparent GIF: 1x1, one palette entry.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, max-age=0"}
# A module constant: `is` against it is cheaper than the Enum class attribute on every hit.
_COUNTED = Outcome.COUNTED


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json", headers=NO_STORE)


def _site_and_live(request: Request) -> tuple[str, LiveCounts]:
    live: LiveCounts = request.state.live
    return ids.site_id(request.path_params["site"]), live


async def take(
    live: LiveCounts,
    site: str,
    page: str,
    visitor: str | None,
    ip: str,
    user_agent: str,
    title: str | None = None,
) -> tuple[Outcome, int, int]:
    """(outcome, page views, site views) of one page view from client `ip` with `user_agent`
    (`title`: the page's title, validated, learned where the site learns titles)."""
    result = await live.hit(site, page, visitor=visitor, ip=ip, user_agent=user_agent, title=title)
    metrics.count_hit(site, result.outcome)
    return result.outcome, result.page_views, result.site_views


async def _take(
    request: Request,
    live: LiveCounts,
    site: str,
    page: str,
    visitor: str | None,
    title: str | None = None,
) -> tuple[Outcome, int, int]:
    # The socket's peer, or the forwarded client when uvicorn trusted the proxy it came from.
    ip = request.client.host if request.client else ""
    user_agent = request.headers.get("user-agent", "")
    return await take(live, site, page, visitor, ip, user_agent, title)


def hit_answer(
    site: str,
    page: str,
    outcome: Outcome,
    page_views: int,
    site_views: int,
    block: stats.Stats | None = None,
) -> bytes:
    """The JSON body answering a hit (with the statistics block when one is given)."""
    counted = outcome is _COUNTED
    body: dict[str, object] = {"site": site, "page": page, "counted": counted}
    if not counted:
        body["reason"] = outcome.value
    body["page_views"] = page_views
    body["site_views"] = site_views
    if block is not None:
        body["stats"] = block.as_dict()
    return orjson.dumps(body)


async def answer_hit(
    live: LiveCounts, site: str, hit: hit_body.HitBody, ip: str, user_agent: str
) -> bytes:
    """Take the hit and answer it; with `stats` asked, the block read after the hit (so it
    includes it)."""
    outcome, page_views, site_views = await take(
        live, site, hit.page, hit.visitor, ip, user_agent, hit.title
    )
    block = await live.stats(site) if hit.stats else None
    return hit_answer(site, hit.page, outcome, page_views, site_views, block)


async def post_hit(request: Request) -> Response:
    """Take one page view and answer whether it counted, with the live totals.

    In the served app, hit_fast_path.HitFastPath answers this route before the middleware
    stack; this endpoint serves it when that layer is not in front (a mounted sub-path).
    """
    site, live = _site_and_live(request)
    hit = hit_body.parse(request.headers.get("content-type"), await request.body())
    # The socket's peer, or the forwarded client when uvicorn trusted the proxy it came from.
    ip = request.client.host if request.client else ""
    user_agent = request.headers.get("user-agent", "")
    return _json_bytes(await answer_hit(live, site, hit, ip, user_agent))


async def pixel_hit(request: Request) -> Response:
    """The same hit for <noscript>: answers a 1x1 GIF that no cache keeps."""
    site, live = _site_and_live(request)
    page = request.query_params.get("page")
    if page is None:
        raise ApiError(422, "missing_field", "page is required", "page")
    page = ids.page_id(page)
    if request.method != "HEAD":  # link checkers and prefetchers are not page views
        await _take(request, live, site, page, None)
    return Response(PIXEL_GIF, media_type="image/gif", headers=NO_STORE)


async def get_counts(request: Request) -> Response:
    """Live totals of the site and up to 100 pages, without counting."""
    site, live = _site_and_live(request)
    return _json_bytes(await counts_answer(live, site, request.query_params.getlist("page")))


async def counts_answer(live: LiveCounts, site: str, raw_pages: list[str]) -> bytes:
    """The JSON body answering a counts read of `raw_pages` (the `page` parameters)."""
    if len(raw_pages) > MAX_PAGES_PER_READ:
        raise ApiError(422, "invalid_field", f"at most {MAX_PAGES_PER_READ} pages per call", "page")
    pages = list(dict.fromkeys(ids.page_id(p) for p in raw_pages))
    counts = await live.counts(site, pages)
    body: dict[str, object] = {
        "site": site,
        "site_views": counts.site_views,
        "pages": counts.pages,
        "day": await live.today(site),
        "site_visitors": counts.site_visitors,
        "page_visitors": counts.page_visitors or {},
    }
    if counts.partial:
        body["partial"] = True  # only when true: see http-api.md
    return orjson.dumps(body)


async def get_stats(request: Request) -> Response:
    """The site's statistics block, live, without counting."""
    site, live = _site_and_live(request)
    return _json_bytes(await stats_answer(live, site))


async def stats_answer(live: LiveCounts, site: str) -> bytes:
    """The JSON body answering a stats read."""
    block = await live.stats(site)
    return orjson.dumps({"site": site, **block.as_dict()})


routes: list[BaseRoute] = [
    Route("/v1/sites/{site}/hits", post_hit, methods=["POST"]),
    Route("/v1/sites/{site}/hit.gif", pixel_hit, methods=["GET"]),
    Route("/v1/sites/{site}/counts", get_counts, methods=["GET"]),
    Route("/v1/sites/{site}/stats", get_stats, methods=["GET"]),
]
