"""Sites: their settings, their registered pages, and their totals read for loading into Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

from services.counter.siteconfig import SiteConfig
from services.db import audit, queries
from services.db import pool as db_pool
from services.db import titles as db_titles

Q = queries.load("sites")
LOAD_FETCH_ROWS = 10_000
# An audit entry lists at most this many pages by name (and counts them all).
AUDIT_LISTED_PAGES = 100

DayRow = tuple[str, str, int]
"""(page, or "" for the whole site; local day YYYY-MM-DD; views counted that day)."""


async def day_rows(
    conn: db_pool.Conn, site: str, since: date, *, by_page: bool
) -> AsyncIterator[list[DayRow]]:
    """The site's daily views since `since` (by page with `by_page`), in chunks; `conn` must
    be in a transaction (a cursor needs one)."""
    query = Q["recent_page_days"] if by_page else Q["recent_site_days"]
    chunk: list[DayRow] = []
    async for row in conn.cursor(query, site, since):
        chunk.append((row["page"], row["day"], row["views"]))
        if len(chunk) >= LOAD_FETCH_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class SiteLoad:
    """Totals of one site read under its row lock, for copying into Redis."""

    def __init__(self, conn: db_pool.Conn, site: str, total: int, config: SiteConfig) -> None:
        self._conn = conn
        self.site = site
        self.total = total
        self.config = config

    async def page_totals(self) -> AsyncIterator[list[tuple[str, int]]]:
        """Page totals in chunks (a site can have many pages)."""
        cursor = self._conn.cursor(Q["page_totals"], self.site)
        chunk: list[tuple[str, int]] = []
        async for row in cursor:
            chunk.append((row["page"], row["total"]))
            if len(chunk) >= LOAD_FETCH_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def day_rows(self, since: date, *, by_page: bool) -> AsyncIterator[list[DayRow]]:
        """The site's daily views since `since`, read under the same lock as its totals."""
        return day_rows(self._conn, self.site, since, by_page=by_page)


class Sites:
    """Site settings and pages over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless Postgres answers."""
        async with db_pool.connection(self.pool) as conn:
            await conn.fetchval("SELECT 1")

    async def put_site(
        self, site: str, changes: Mapping[str, Any], author: audit.Author
    ) -> tuple[SiteConfig, bool]:
        """Create a site, or change the given settings of an existing one (the others keep
        their values), logged as `site.create` or `site.update` in the same transaction; the
        resulting config and whether the site was created.

        Raises siteconfig.InvalidSetting when the merged settings are not acceptable.
        """
        async with db_pool.transaction(self.pool) as conn:
            row = await conn.fetchrow(Q["lock_site_settings"], site)
            current = _config(row) if row is not None else SiteConfig()
            config = SiteConfig.from_values({**current.as_dict(), **changes})
            created: bool = await conn.fetchval(
                Q["upsert_site"],
                site,
                config.timezone,
                config.dedupe_window,
                config.max_pages,
                config.registered_pages_only,
                list(config.page_patterns),
                list(config.allowed_origins),
                config.public_top,
                config.learn_titles,
            )
            await conn.execute(Q["ensure_site_views"], site)
            new = config.as_dict()
            if created:
                await audit.record(conn, site, author, "site.create", {"settings": new})
            else:
                old = current.as_dict()
                changed = {
                    name: {"old": old.get(name), "new": value}
                    for name, value in new.items()
                    if old.get(name) != value
                }
                await audit.record(conn, site, author, "site.update", {"changes": changed})
            return config, created

    async def get_site(self, site: str) -> SiteConfig | None:
        """The site's settings, or None when it is not registered."""
        async with db_pool.connection(self.pool) as conn:
            row = await conn.fetchrow(Q["get_site"], site)
        return _config(row) if row else None

    async def recent_days(self, site: str, since: date, *, by_page: bool) -> list[DayRow]:
        """The site's daily views since `since` (by page with `by_page`), committed now."""
        async with db_pool.transaction(self.pool) as conn:
            chunks = day_rows(conn, site, since, by_page=by_page)
            return [row async for chunk in chunks for row in chunk]

    async def register_pages(
        self,
        site: str,
        pages: Sequence[str],
        titles: Mapping[str, str | None],
        author: audit.Author,
    ) -> tuple[list[str], int]:
        """Add pages (with no views yet) to a site and set the admin titles given (None:
        clear it), logged as `pages.register`, in one transaction; the pages that were new
        and how many titles changed."""
        async with db_pool.transaction(self.pool) as conn:
            rows = await conn.fetch(Q["register_pages"], site, list(pages))
            new = [row["page"] for row in rows]
            titles_set = await db_titles.set_admin_on(conn, site, titles)
            detail: dict[str, object] = {
                "pages": len(pages),
                "registered": len(new),
                "registered_pages": new[:AUDIT_LISTED_PAGES],
                "titles_set": titles_set,
            }
            await audit.record(conn, site, author, "pages.register", detail)
        return new, titles_set

    async def flushed_total(self, site: str) -> int:
        """The site's total as flushed to Postgres (0 for an unknown site)."""
        async with db_pool.connection(self.pool) as conn:
            total = await conn.fetchval(Q["flushed_site_total"], site)
        return int(total or 0)

    async def flushed_pages(
        self, site: str, pages: Sequence[str] | None
    ) -> AsyncIterator[list[tuple[str, int]]]:
        """Totals as flushed to Postgres of `pages` (None: every page of the site), in
        chunks; a page with no row is left out."""
        async with db_pool.transaction(self.pool) as conn:
            if pages is None:
                cursor = conn.cursor(Q["page_totals"], site)
            else:
                cursor = conn.cursor(Q["flushed_page_totals"], site, list(pages))
            chunk: list[tuple[str, int]] = []
            async for row in cursor:
                chunk.append((row["page"], int(row["total"])))
                if len(chunk) >= LOAD_FETCH_ROWS:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    @asynccontextmanager
    async def site_load(self, site: str) -> AsyncIterator[SiteLoad | None]:
        """Hold the site's totals row locked while the caller copies its totals to Redis.

        A flush of this site commits only after checking Redis under the same lock, so a
        load and a flush can never miss each other. Yields None for an unknown site.
        """
        async with db_pool.transaction(self.pool) as conn:
            row = await conn.fetchrow(Q["lock_site_totals"], site)
            yield None if row is None else SiteLoad(conn, site, row["total"], _config(row))


def _config(row: db_pool.Record) -> SiteConfig:
    return SiteConfig(
        timezone=row["timezone"],
        dedupe_window=row["dedupe_window"],
        max_pages=row["max_pages"],
        registered_pages_only=row["registered_pages_only"],
        page_patterns=tuple(row["page_patterns"]),
        allowed_origins=tuple(row["allowed_origins"]),
        public_top=row["public_top"],
        learn_titles=row["learn_titles"],
    )
