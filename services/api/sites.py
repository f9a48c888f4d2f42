"""Admin routes for sites."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from services.api.deps import Admin, Live
from services.api.errors import ApiError
from services.api.json_body import json_object
from services.counter import ids

DEFAULT_TIMEZONE = "UTC"

router = APIRouter(prefix="/v1/sites/{site}", dependencies=[Admin])


@router.put("")
async def put_site(site: str, request: Request, live: Live) -> Response:
    """Create or update a site: body `{"timezone": "Asia/Ho_Chi_Minh"}` (optional)."""
    site = ids.site_id(site)
    raw = await request.body()
    data = json_object(raw) if raw.strip() else {}
    timezone = data.get("timezone", DEFAULT_TIMEZONE)
    if not isinstance(timezone, str) or not timezone or len(timezone) > 64:
        raise ApiError(422, "invalid_field", "timezone must be an IANA name", "timezone")
    created = await live.register(site, timezone)
    return Response(
        orjson.dumps({"site": site, "timezone": timezone, "created": created}),
        status_code=201 if created else 200,
        media_type="application/json",
    )
