"""Public counting routes: the hit (JSON or pixel) and the live counts read."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from services.api import hit_body
from services.api.deps import Live
from services.api.errors import ApiError
from services.counter import ids

MAX_PAGES_PER_READ = 100
# The smallest transparent GIF: 1x1, one palette entry.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, max-age=0"}

router = APIRouter(prefix="/v1/sites/{site}")


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=NO_STORE)


@router.post("/hits")
async def post_hit(site: str, request: Request, live: Live) -> Response:
    """Count one page view and answer the live totals."""
    site = ids.site_id(site)
    hit = hit_body.parse(request.headers.get("content-type"), await request.body())
    result = await live.hit(site, hit.page)
    return _json(
        {
            "site": site,
            "page": hit.page,
            "counted": True,
            "page_views": result.page_views,
            "site_views": result.site_views,
        }
    )


@router.get("/hit.gif")
async def pixel_hit(site: str, live: Live, page: str | None = None) -> Response:
    """The same hit for <noscript>: answers a 1x1 GIF that no cache keeps."""
    site = ids.site_id(site)
    if page is None:
        raise ApiError(422, "missing_field", "page is required", "page")
    await live.hit(site, ids.page_id(page))
    return Response(PIXEL_GIF, media_type="image/gif", headers=NO_STORE)


@router.get("/counts")
async def get_counts(site: str, request: Request, live: Live) -> Response:
    """Live totals of the site and up to 100 pages, without counting."""
    site = ids.site_id(site)
    raw_pages = request.query_params.getlist("page")
    if len(raw_pages) > MAX_PAGES_PER_READ:
        raise ApiError(422, "invalid_field", f"at most {MAX_PAGES_PER_READ} pages per call", "page")
    pages = list(dict.fromkeys(ids.page_id(p) for p in raw_pages))
    counts = await live.counts(site, pages)
    return _json({"site": site, "site_views": counts.site_views, "pages": counts.pages})
