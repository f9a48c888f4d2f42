"""Report routes: top pages and views per day from Postgres, as JSON or CSV; the live totals
for the dashboard. Bearer VIEWCOUNTER_REPORT_TOKEN, VIEWCOUNTER_ADMIN_TOKEN, or a report or
admin key of the site (services/api/access.py)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from services.api import public_schema
from services.api.access import Reader
from services.api.deps import Live
from services.api.errors import unknown_site
from services.counter import ids
from services.counter.errors import CounterUnavailable
from services.counting import reports
from services.db import reports as db_reports


async def get_reporter(request: Request) -> reports.Reporter:
    """A Reporter on the app's Postgres pool."""
    stored: db_reports.Reports = request.state.reports
    return reports.Reporter(stored)


ReporterDep = Annotated[reports.Reporter, Depends(get_reporter)]

router = APIRouter(
    prefix="/v1/sites/{site}/reports",
    dependencies=[Reader],
    tags=["reports"],
    responses=public_schema.error_responses(401, 403, 404, 422, 503),
)

# The query parameters of the reports.
FromDay = Annotated[str | None, Query(alias="from", description="YYYY-MM-DD, local")]
ToDay = Annotated[str | None, Query(description="YYYY-MM-DD, local; default today")]
Format = Annotated[str | None, Query(description="json (default) or csv")]

_CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}, "application/json": {}}}
}


def _answer(report: reports.TopReport | reports.DailyReport, fmt: str, name: str) -> Response:
    headers = {"Cache-Control": "no-store"}
    if fmt == "csv":
        r = report.range
        headers["Content-Disposition"] = (
            f'attachment; filename="{r.site}-{name}-{r.first.isoformat()}-{r.last.isoformat()}.csv"'
        )
        return Response(
            reports.to_csv(report.header(), report.rows()),
            media_type="text/csv; charset=utf-8",
            headers=headers,
        )
    return Response(orjson.dumps(report.as_dict()), media_type="application/json", headers=headers)


@router.get("/top", responses=_CSV_ANSWER)
async def top(
    site: str,
    reporter: ReporterDep,
    from_: FromDay = None,
    to: ToDay = None,
    limit: Annotated[str | None, Query(description="1-1000, default 10")] = None,
    format: Format = None,
) -> Response:
    """The most viewed pages between two local days of the site (inclusive)."""
    site = ids.site_id(site)
    report = await reporter.top(
        site,
        reports.parse_day(from_, "from"),
        reports.parse_day(to, "to"),
        reports.parse_limit(limit),
    )
    return _answer(report, reports.parse_format(format), "top")


@router.get("/daily", responses=_CSV_ANSWER)
async def daily(
    site: str,
    reporter: ReporterDep,
    from_: FromDay = None,
    to: ToDay = None,
    page: Annotated[str | None, Query(description="a page id; default: the whole site")] = None,
    format: Format = None,
) -> Response:
    """Views and distinct visitors per local day, of the site or of one page."""
    site = ids.site_id(site)
    page_id = None if page is None else ids.page_id(page)
    fmt = reports.parse_format(format)
    report = await reporter.daily(
        site, reports.parse_day(from_, "from"), reports.parse_day(to, "to"), page_id
    )
    return _answer(report, fmt, "daily")


@router.get("/totals")
async def totals(site: str, live: Live, request: Request) -> Response:
    """The live site total (Redis, null when Redis is unavailable) and the Postgres parts."""
    site = ids.site_id(site)
    stored_reports: db_reports.Reports = request.state.reports
    stored = await stored_reports.totals(site)
    if stored is None:
        raise unknown_site()
    live_total: int | None
    try:
        live_total = (await live.counts(site, [])).site_views
    except CounterUnavailable:
        live_total = None
    body = {
        "site": site,
        "timezone": stored.timezone,
        "live_views": live_total,
        "views": stored.views,
        "baseline": stored.baseline,
    }
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
