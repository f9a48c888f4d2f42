"""Invariant checks on the Postgres tables, shared by the integration and chaos tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg


@dataclass(frozen=True)
class Totals:
    """Everything committed for one site."""

    site_views: int
    pages: dict[str, int]
    page_daily_sum: dict[str, int]
    site_daily_sum: int
    batches: int


async def totals(database_url: str, site: str) -> Totals:
    """Read one consistent snapshot of the site's tables."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            site_views = await conn.fetchval("SELECT views FROM site_views WHERE site = $1", site)
            pages = {
                r["page"]: r["views"]
                for r in await conn.fetch(
                    "SELECT page, views FROM page_views WHERE site = $1", site
                )
            }
            daily = {
                r["page"]: r["v"]
                for r in await conn.fetch(
                    "SELECT page, sum(views) AS v FROM page_views_daily WHERE site = $1 "
                    "GROUP BY page",
                    site,
                )
            }
            site_daily = await conn.fetchval(
                "SELECT coalesce(sum(views), 0) FROM site_views_daily WHERE site = $1", site
            )
            batches = await conn.fetchval("SELECT count(*) FROM flush_batches")
    finally:
        await conn.close()
    return Totals(site_views or 0, pages, daily, site_daily, batches)


async def fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def fetchval(database_url: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def assert_consistent(t: Totals) -> None:
    """Site total == sum of page totals == sum of daily buckets, in one committed state."""
    assert t.site_views == sum(t.pages.values())
    assert t.pages == {p: v for p, v in t.page_daily_sum.items()}
    assert t.site_daily_sum == t.site_views


def views(counts_body: dict[str, object]) -> dict[str, object]:
    """The view totals of a `counts` answer (site, site_views, pages), without visitors."""
    return {k: counts_body[k] for k in ("site", "site_views", "pages")}


def days_around_now(timezone: str) -> set[str]:
    """Today's date in `timezone`, and tomorrow's (a test may run across midnight)."""
    now = datetime.now(ZoneInfo(timezone))
    return {now.date().isoformat(), (now + timedelta(days=1)).date().isoformat()}
