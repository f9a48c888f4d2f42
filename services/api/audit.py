"""`GET /v1/sites/{site}/audit`: the site's audit log, newest first, paged with `before`.
The operator or the site's admin key."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from services.api import public_schema
from services.api.access import Admin
from services.api.deps import AuditLogDep, Live
from services.api.errors import ApiError
from services.counter import ids
from services.db.audit import MAX_PAGE

DEFAULT_LIMIT = 100

router = APIRouter(
    prefix="/v1/sites/{site}",
    dependencies=[Admin],
    tags=["admin"],
    responses=public_schema.error_responses(401, 403, 404, 422, 429, 503),
)


def _whole(raw: str | None, name: str, low: int, high: int, default: int | None) -> int | None:
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(422, "invalid_field", f"{name} must be a whole number {low}-{high}", name)
    return int(raw)


@router.get("/audit")
async def audit_log(
    site: str,
    live: Live,
    log: AuditLogDep,
    limit: Annotated[str | None, Query(description=f"1-{MAX_PAGE}, default 100")] = None,
    before: Annotated[str | None, Query(description="an entry id: older entries only")] = None,
) -> Response:
    """Admin actions on the site, newest first; `next_before` pages on (null: no more)."""
    site = ids.site_id(site)
    size = _whole(limit, "limit", 1, MAX_PAGE, DEFAULT_LIMIT)
    older_than = _whole(before, "before", 1, 2**63 - 1, None)
    assert size is not None
    await live.site_config(site)
    entries = await log.page(site, size + 1, older_than)
    shown = entries[:size]
    body = {
        "entries": [entry.as_dict() for entry in shown],
        "next_before": shown[-1].id if len(entries) > size else None,
    }
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
