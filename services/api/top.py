"""The most-read list: `GET /v1/sites/{site}/top?period=&limit=` (public, live, at most 60 s
stale; see services/counting/top.py).

A plain Starlette endpoint, like the counts read: it is public and polled by every page
that shows the list, and its answer mostly comes from the per-process cache.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.api.hits import NO_STORE
from services.counter import ids
from services.counting import top


async def get_top(request: Request) -> Response:
    """The site's most viewed pages of today, this week or this month."""
    site = ids.site_id(request.path_params["site"])
    query = request.query_params
    period = top.parse_period(query.get("period"))
    limit = top.parse_limit(query.get("limit"))
    most_read: top.MostRead = request.state.top
    answer = await most_read.top(site, period, limit)
    return Response(orjson.dumps(answer.as_dict()), media_type="application/json", headers=NO_STORE)


routes: list[BaseRoute] = [Route("/v1/sites/{site}/top", get_top, methods=["GET"])]
