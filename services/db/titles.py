"""Page titles: set by a site's admin, learned from hits (moved in by the flusher), shown in
the most-read list. An admin-set title always wins over a learned one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.db import pool as db_pool
from services.db import queries

Q = queries.load("titles")


class Titles:
    """Page titles over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def set_admin(self, site: str, titles: Mapping[str, str | None]) -> int:
        """Set the admin titles of pages (None: clear it); how many changed."""
        return await self._write("set_admin_titles", site, titles)

    async def learn(self, site: str, titles: Mapping[str, str]) -> int:
        """Record titles learned from the site's hits (each the last one seen); how many
        changed. Idempotent."""
        return await self._write("learn_titles", site, titles)

    async def _write(self, query: str, site: str, titles: Mapping[str, str | None]) -> int:
        """Run the named query over the site's (page, title) pairs; how many rows changed."""
        if not titles:
            return 0
        async with db_pool.connection(self.pool) as conn:
            return await _write_on(conn, query, site, titles)

    async def shown(self, site: str, pages: Sequence[str]) -> dict[str, str]:
        """The title shown for each of `pages` that has one (the admin's, else the learned)."""
        if not pages:
            return {}
        async with db_pool.connection(self.pool) as conn:
            rows = await conn.fetch(Q["shown_titles"], site, list(pages))
        return {r["page"]: r["title"] for r in rows if r["title"] is not None}


async def set_admin_on(conn: db_pool.Conn, site: str, titles: Mapping[str, str | None]) -> int:
    """Set admin titles on `conn` (in the caller's transaction); how many changed."""
    if not titles:
        return 0
    return await _write_on(conn, "set_admin_titles", site, titles)


async def _write_on(
    conn: db_pool.Conn, query: str, site: str, titles: Mapping[str, str | None]
) -> int:
    status = await conn.execute(Q[query], site, list(titles), list(titles.values()))
    return _affected(status)


def _affected(status: str) -> int:
    """Rows a statement wrote, from its command status ("INSERT 0 42")."""
    return int(status.rsplit(" ", 1)[1])
