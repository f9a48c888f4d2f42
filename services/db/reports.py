"""Report queries: Postgres only, days being the site's local days. Issue 6."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.db import pool as db_pool
from services.db import queries
from services.db import top as db_top

Q = queries.load("reports")
# A report's top pages are the most-read list's: one query, in top.sql.
Q["report_top_pages"] = db_top.Q["top_pages"]


@dataclass(frozen=True)
class SiteTotals:
    """A site's counted views and baseline in Postgres, and its time zone."""

    views: int
    baseline: int
    timezone: str


class Reports:
    """Report queries over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def totals(self, site: str) -> SiteTotals | None:
        """The site's totals and time zone; None for an unknown site."""
        async with db_pool.connection(self.pool) as conn:
            row = await conn.fetchrow(Q["report_totals"], site)
        return None if row is None else SiteTotals(row["views"], row["baseline"], row["timezone"])

    async def top_pages(
        self, site: str, first: date, last: date, limit: int
    ) -> tuple[list[tuple[str, int]], int]:
        """The `limit` most viewed pages between two local days (inclusive), and the site's
        views in that range."""
        async with db_pool.connection(self.pool) as conn:
            rows = await conn.fetch(Q["report_top_pages"], site, first, last, limit)
            total: int = await conn.fetchval(Q["report_range_total"], site, first, last)
        return [(r["page"], r["views"]) for r in rows], total

    async def daily(
        self, site: str, first: date, last: date, page: str | None
    ) -> list[tuple[date, int, int]]:
        """(day, views, visitors) for each local day of the range, zeros included; the
        site's, or one page's."""
        async with db_pool.connection(self.pool) as conn:
            if page is None:
                rows = await conn.fetch(Q["report_site_daily"], site, first, last)
            else:
                rows = await conn.fetch(Q["report_page_daily"], site, page, first, last)
        return [(r["day"], r["views"], r["visitors"]) for r in rows]
