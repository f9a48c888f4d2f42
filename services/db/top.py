"""The most viewed pages of a range of local days, from the flushed daily counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from services.db import pool as db_pool
from services.db import queries

Q = queries.load("top")


@dataclass(frozen=True)
class Ranking:
    """What one read of a site's flushed counts found (one snapshot of Postgres)."""

    pages: list[tuple[str, int]]  # the most viewed pages of the range, ties by page id
    views_of: dict[str, int]  # the range's views of the other pages asked about (0: absent)
    flushed_views: int | None  # the site's flushed total (None: no such site)


class TopPages:
    """Ranking reads over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def flushed_views(self, site: str) -> int | None:
        """The site's flushed counted views (None: no such site); it changes with each flush
        of the site, and only then."""
        async with db_pool.connection(self.pool) as conn:
            views: int | None = await conn.fetchval(Q["flushed_views"], site)
        return views

    async def ranking(
        self, site: str, first: date, last: date, limit: int, also: Sequence[str] = ()
    ) -> Ranking:
        """The `limit` most viewed pages between two local days (inclusive; ties by page id),
        the views of those days of each page of `also`, and the site's flushed total, all
        read in one snapshot (a read-only repeatable-read transaction)."""
        async with (
            db_pool.connection(self.pool) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await conn.fetch(Q["top_pages"], site, first, last, limit)
            extra = (
                await conn.fetch(Q["pages_views"], site, first, last, list(also)) if also else []
            )
            views: int | None = await conn.fetchval(Q["flushed_views"], site)
        return Ranking(
            [(r["page"], r["views"]) for r in rows], {r["page"]: r["views"] for r in extra}, views
        )
