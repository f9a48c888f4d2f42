"""Admin routes that carry legacy counts over: CSV import and single baselines.

The import body is streamed straight into Postgres (COPY), never held whole: its size is
bounded by IMPORT_MAX_BYTES (checked while reading), not by VIEWCOUNTER_MAX_BODY_BYTES,
which is why BodyLimit lets IMPORT_PATH through.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from services.api import public_schema
from services.api.access import Admin, AdminAuthor
from services.api.errors import ApiError
from services.api.json_body import json_object
from services.config import Settings
from services.counter import ids
from services.counter.baselinestore import BaselineStore
from services.counting import baselines
from services.db import baselines as db_baselines

IMPORT_MAX_BYTES = 1 << 30
# Paths whose body size the route bounds itself (for BodyLimit).
IMPORT_PATH = re.compile(r"^/v1/sites/[^/]+/import$")
MAX_BY_CHARS = 100
CSV_TYPES = ("text/csv", "text/plain", "application/octet-stream", "")


async def get_importer(request: Request) -> baselines.Importer:
    """An Importer on the app's clients."""
    settings: Settings = request.state.settings
    stored: db_baselines.Baselines = request.state.baselines
    store: BaselineStore = request.state.baseline_store
    return baselines.Importer(stored, store, default_max_pages=settings.max_pages_per_site)


ImporterDep = Annotated[baselines.Importer, Depends(get_importer)]
# ?by=: who made a change, for the audit trail.
ChangedBy = Annotated[str | None, Query(description="who, for the audit trail")]

router = APIRouter(
    prefix="/v1/sites/{site}",
    dependencies=[Admin],
    tags=["admin"],
    responses=public_schema.error_responses(400, 401, 403, 404, 413, 415, 422, 503),
)


def _changed_by(request: Request, by: str | None) -> str:
    who = f"api {request.client.host if request.client else '-'}"
    if by is None or by == "":
        return who
    if len(by) > MAX_BY_CHARS or not by.isprintable():
        raise ApiError(
            422, "invalid_field", f"by must be printable, at most {MAX_BY_CHARS} chars", "by"
        )
    return f"{who} {by}"


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def _body(request: Request) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > IMPORT_MAX_BYTES:
            raise ApiError(413, "body_too_large", f"imports are at most {IMPORT_MAX_BYTES} bytes")
        if chunk:
            yield chunk


def _site_total(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    return baselines.views_value(raw, "site_total")


_IMPORT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


@router.post("/import", openapi_extra=_IMPORT_DOC)
async def import_csv(
    site: str,
    request: Request,
    importer: ImporterDep,
    author: AdminAuthor,
    site_total: Annotated[
        str | None, Query(description="the legacy site total; default: unchanged")
    ] = None,
    by: ChangedBy = None,
) -> Response:
    """Set baselines from a `page,views` CSV body (and the site's from `site_total`);
    answers the import report with the rejected rows."""
    site = ids.site_id(site)
    total = _site_total(site_total)
    changed_by = _changed_by(request, by)
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type not in CSV_TYPES:
        raise ApiError(415, "unsupported_media_type", "send the CSV as text/csv", "content-type")
    report = await importer.import_csv(
        site, _body(request), site_total=total, changed_by=changed_by, author=author
    )
    return _json(report.as_dict())


def _baseline_answer(site: str, result: db_baselines.BaselineResult, pending: int) -> Response:
    return _json(
        {
            "site": site,
            "change_id": result.change_id,
            "changed": result.change_id is not None,
            "live_pending": pending,
        }
    )


def _baseline_of(data: dict[str, object]) -> int:
    value = data.get("baseline")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, "invalid_field", "baseline must be a whole number of views", "baseline")
    if not 0 <= value <= baselines.MAX_VIEWS:
        raise ApiError(
            422, "invalid_field", f"baseline must be 0 to {baselines.MAX_VIEWS}", "baseline"
        )
    return value


def _only(data: dict[str, object], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(422, "unknown_field", f"{unknown[0]} is not a field here", unknown[0])


def _json_body(properties: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON object itself: these fields,
    all required, no others."""
    schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_BASELINE = {"type": "integer", "minimum": 0}
_PAGE_BODY = _json_body({"page": {"type": "string"}, "baseline": _BASELINE})
_SITE_BODY = _json_body({"baseline": _BASELINE})


@router.put("/pages/baseline", openapi_extra=_PAGE_BODY)
async def put_page_baseline(
    site: str,
    request: Request,
    importer: ImporterDep,
    author: AdminAuthor,
    by: ChangedBy = None,
) -> Response:
    """Set one page's baseline: `{"page": "...", "baseline": n}` (page ids may hold `/`, so
    the page goes in the body, not the path)."""
    site = ids.site_id(site)
    data = json_object(await request.body())
    _only(data, {"page", "baseline"})
    page = ids.page_id(data.get("page"))
    value = _baseline_of(data)
    result, pending = await importer.set_page(
        site, page, value, changed_by=_changed_by(request, by), author=author
    )
    if result.rejected:
        rejected = result.rejected[0]
        raise ApiError(422, "page_limit", rejected.reason, "page")
    return _baseline_answer(site, result, pending)


@router.put("/baseline", openapi_extra=_SITE_BODY)
async def put_site_baseline(
    site: str,
    request: Request,
    importer: ImporterDep,
    author: AdminAuthor,
    by: ChangedBy = None,
) -> Response:
    """Set the site total's baseline: `{"baseline": n}`."""
    site = ids.site_id(site)
    data = json_object(await request.body())
    _only(data, {"baseline"})
    value = _baseline_of(data)
    result, pending = await importer.set_site(
        site, value, changed_by=_changed_by(request, by), author=author
    )
    return _baseline_answer(site, result, pending)
