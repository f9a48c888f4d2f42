"""Reports from Postgres: the most viewed pages and views per day, in the site's local days.

Both the report routes and `viewcounter report` use this; it knows no HTTP. Days are the
site's local dates, as the flusher stored them (`page_views_daily.day`): a hit at 23:59 in
Ho Chi Minh City belongs to that day however late it was flushed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from services.counter import ids
from services.counting.live import UnknownSite, zone
from services.db import reports as db_reports

DEFAULT_DAYS = 7
MAX_RANGE_DAYS = 3 * 366 + 1
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
FORMATS = ("json", "csv")


def parse_day(raw: str | None, field_name: str) -> date | None:
    """A YYYY-MM-DD date, or None when not given; InvalidId naming `field_name` otherwise."""
    if raw is None or raw == "":
        return None
    try:
        if len(raw) != 10:
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise ids.InvalidId(field_name, "must be a date as YYYY-MM-DD") from None


def parse_limit(raw: str | None) -> int:
    """How many top pages: 1..MAX_LIMIT, default DEFAULT_LIMIT."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ids.InvalidId("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_format(raw: str | None) -> str:
    """`json` (default) or `csv`."""
    if raw is None or raw == "":
        return "json"
    if raw not in FORMATS:
        raise ids.InvalidId("format", "must be json or csv")
    return raw


@dataclass(frozen=True)
class Range:
    """Local days `first`..`last` (inclusive) of a site in its time zone."""

    site: str
    timezone: str
    first: date
    last: date


@dataclass(frozen=True)
class TopReport:
    """The most viewed pages of a range, and the site's views in it."""

    range: Range
    limit: int
    site_views: int
    pages: list[tuple[str, int]]

    def as_dict(self) -> dict[str, object]:
        """The JSON shape."""
        return {
            **_range_dict(self.range),
            "limit": self.limit,
            "site_views": self.site_views,
            "pages": [{"rank": i, "page": p, "views": v} for i, (p, v) in enumerate(self.pages, 1)],
        }

    def header(self) -> list[str]:
        """CSV / table columns."""
        return ["rank", "page", "views"]

    def rows(self) -> list[list[object]]:
        """CSV / table rows."""
        return [[i, p, v] for i, (p, v) in enumerate(self.pages, 1)]


@dataclass(frozen=True)
class DailyReport:
    """Views and distinct visitors per local day of the site, or of one page."""

    range: Range
    page: str | None
    days: list[tuple[date, int, int]]

    def as_dict(self) -> dict[str, object]:
        """The JSON shape."""
        return {
            **_range_dict(self.range),
            "page": self.page,
            "views": sum(v for _, v, _ in self.days),
            "days": [{"day": d.isoformat(), "views": v, "visitors": u} for d, v, u in self.days],
        }

    def header(self) -> list[str]:
        """CSV / table columns."""
        return ["day", "views", "visitors"]

    def rows(self) -> list[list[object]]:
        """CSV / table rows."""
        return [[d.isoformat(), v, u] for d, v, u in self.days]


def _range_dict(r: Range) -> dict[str, object]:
    return {
        "site": r.site,
        "timezone": r.timezone,
        "from": r.first.isoformat(),
        "to": r.last.isoformat(),
    }


class Reporter:
    """Builds reports over the stored reports (db.reports.Reports)."""

    def __init__(self, reports: db_reports.Reports) -> None:
        self._reports = reports

    async def site_range(self, site: str, first: date | None, last: date | None) -> Range:
        """The range asked, defaults filled in the site's time zone: `to` today, `from` six
        days before `to`. UnknownSite; InvalidId naming `from`/`to` for a bad range."""
        totals = await self._reports.totals(site)
        if totals is None:
            raise UnknownSite(site)
        if last is None:
            last = datetime.now(zone(totals.timezone)).date()
        if first is None:
            first = last - timedelta(days=DEFAULT_DAYS - 1)
        if first > last:
            raise ids.InvalidId("from", "must not be after to")
        if (last - first).days + 1 > MAX_RANGE_DAYS:
            raise ids.InvalidId("from", f"the range must be at most {MAX_RANGE_DAYS} days")
        return Range(site, totals.timezone, first, last)

    async def top(self, site: str, first: date | None, last: date | None, limit: int) -> TopReport:
        """The `limit` most viewed pages of the range (ties: by page id)."""
        span = await self.site_range(site, first, last)
        pages, total = await self._reports.top_pages(site, span.first, span.last, limit)
        return TopReport(span, limit, total, pages)

    async def daily(
        self, site: str, first: date | None, last: date | None, page: str | None
    ) -> DailyReport:
        """Views per day of the range, zeros included: the site's, or `page`'s."""
        span = await self.site_range(site, first, last)
        days = await self._reports.daily(site, span.first, span.last, page)
        return DailyReport(span, page, days)


def to_csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """RFC 4180 CSV with a header line (CRLF line ends, as the csv module writes)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def to_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns for a terminal; numbers right-aligned."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"
