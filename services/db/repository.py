"""All SQL of viewcounter: a repository handed an asyncpg pool (which it never closes).

asyncpg and OS errors become `DatabaseUnavailable` here, so callers deal with one error.
"""

from __future__ import annotations

import re
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.counter.siteconfig import SiteConfig

Conn = asyncpg.Connection | PoolConnectionProxy
ROWS_PER_STATEMENT = 20_000
LOAD_FETCH_ROWS = 10_000


def _load_queries() -> dict[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text("utf-8")
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.MULTILINE)
    return {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}


Q = _load_queries()


class DatabaseUnavailable(Exception):
    """Postgres is unreachable, timed out or refused the work; nothing was committed."""


class GenerationChanged(Exception):
    """Redis lost a site's live totals while its batch was in hand; the batch was rolled back."""


DailyRow = tuple[str, str, str, int, int]
"""(site, page, local day YYYY-MM-DD, hits, distinct visitors of the page that day)."""
FLUSH_COLUMNS = ("site", "page", "day", "hits", "visitors")


class BatchStream:
    """A batch's deltas for `apply_batch`, streamed in chunks so that memory is bounded by the
    chunk, not by the batch.

    `chunks` yields lists of DailyRow; a (site, page, day) may come more than once: its hits
    add up and its largest visitor estimate (an absolute estimate, not a delta) wins.
    `site_visitors` answers the distinct-visitor estimates of (site, day) buckets, in order;
    it is asked once every chunk is in. `sites` are the sites the batch covers. `hits` and
    `rows` (distinct (site, page, day) buckets) are what was written, once it was.
    """

    def __init__(
        self,
        sites: Iterable[str],
        chunks: AsyncIterable[Sequence[DailyRow]],
        site_visitors: Callable[[Sequence[tuple[str, str]]], Awaitable[Sequence[int]]],
    ) -> None:
        self.sites = frozenset(sites)
        self.chunks = chunks
        self.site_visitors = site_visitors
        self.hits = 0
        self.rows = 0


@dataclass(frozen=True)
class Applied:
    """The batch is now in Postgres, committed by this call."""


@dataclass(frozen=True)
class AlreadyApplied:
    """The ledger had the batch id already; `keys` are the snapshots that batch covered."""

    keys: list[str]


def connect_pool(
    url: str, *, statement_timeout_s: float, min_size: int = 0, max_size: int = 10
) -> Awaitable[asyncpg.Pool]:
    """A pool with server-side timeouts, so a stuck query or lock cannot hang a worker."""
    ms = str(int(statement_timeout_s * 1000))
    return asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=10,
        command_timeout=statement_timeout_s + 5,
        server_settings={
            "statement_timeout": ms,
            "lock_timeout": ms,
            "idle_in_transaction_session_timeout": str(int(statement_timeout_s * 2000)),
            "application_name": "viewcounter",
            # The flusher deletes a snapshot from Redis once COMMIT returns: that COMMIT must
            # be durable even where the server default is synchronous_commit=off.
            "synchronous_commit": "on",
        },
    )


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,  # a connection left mid-operation by a dead server
        OSError,
        TimeoutError,
    ) as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc


class SiteLoad:
    """Totals of one site read under its row lock, for copying into Redis."""

    def __init__(self, conn: Conn, site: str, total: int, config: SiteConfig) -> None:
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


class Repository:
    """Named queries over a pool; one method per unit of work."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless Postgres answers."""
        async with _translated(), self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def put_site(self, site: str, changes: Mapping[str, Any]) -> tuple[SiteConfig, bool]:
        """Create a site, or change the given settings of an existing one (the others keep
        their values); the resulting config and whether the site was created.

        Raises siteconfig.InvalidSetting when the merged settings are not acceptable.
        """
        async with _translated(), self.pool.acquire() as conn, conn.transaction():
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
            )
            await conn.execute(Q["ensure_site_views"], site)
            return config, created

    async def get_site(self, site: str) -> SiteConfig | None:
        """The site's settings, or None when it is not registered."""
        async with _translated(), self.pool.acquire() as conn:
            row = await conn.fetchrow(Q["get_site"], site)
        return _config(row) if row else None

    async def register_pages(self, site: str, pages: Sequence[str]) -> list[str]:
        """Add pages (with no views yet) to a site; the ones that were new."""
        async with _translated(), self.pool.acquire() as conn:
            rows = await conn.fetch(Q["register_pages"], site, list(pages))
        return [row["page"] for row in rows]

    @asynccontextmanager
    async def site_load(self, site: str) -> AsyncIterator[SiteLoad | None]:
        """Hold the site's totals row locked while the caller copies its totals to Redis.

        A flush of this site commits only after checking Redis under the same lock, so a
        load and a flush can never miss each other. Yields None for an unknown site.
        """
        async with _translated(), self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(Q["lock_site_totals"], site)
            yield None if row is None else SiteLoad(conn, site, row["total"], _config(row))

    async def batch_keys(self, batch_id: str) -> list[str] | None:
        """Snapshot keys the ledger recorded for `batch_id`, or None when it was never applied."""
        async with _translated(), self.pool.acquire() as conn:
            keys: list[str] | None = await conn.fetchval(Q["batch_keys"], batch_id)
            return keys

    async def apply_batch(
        self,
        batch_id: str,
        snapshot_keys: Sequence[str],
        rows: BatchStream,
        still_current: Callable[[], Awaitable[bool]],
    ) -> Applied | AlreadyApplied:
        """Add a batch's deltas and record its id, in one transaction; exactly once per id.

        The rows are streamed in with COPY (into a temporary table) once the id is claimed;
        whatever reading them raises rolls everything back. `still_current` is asked after
        the sites' totals rows are locked and before COMMIT: if Redis was refilled meanwhile
        the batch is rolled back (GenerationChanged).
        """
        async with _translated(), self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    # Claimed first: a second flusher with the same batch waits here for our
                    # COMMIT, then finds the id taken. Its size is known once the rows are in.
                    claimed = await conn.fetchval(
                        Q["claim_batch"], batch_id, 0, 0, list(snapshot_keys)
                    )
                    if claimed is None:
                        keys: list[str] = await conn.fetchval(Q["batch_keys"], batch_id)
                        return AlreadyApplied(keys)
                    await _write_rows(conn, rows)
                    await conn.execute(Q["record_batch_size"], batch_id, rows.hits, rows.rows)
                    if not await still_current():
                        raise GenerationChanged(batch_id)
            except GenerationChanged:
                raise  # rolled back cleanly; the connection is fine
            except BaseException:
                # Cancelled or failed mid-transaction (COPY cut mid-stream too), or the server
                # went away: never hand this connection back to the pool in an unknown state.
                if not conn.is_closed():
                    conn.terminate()
                raise
        return Applied()


def _config(row: asyncpg.Record) -> SiteConfig:
    return SiteConfig(
        timezone=row["timezone"],
        dedupe_window=row["dedupe_window"],
        max_pages=row["max_pages"],
        registered_pages_only=row["registered_pages_only"],
        page_patterns=tuple(row["page_patterns"]),
        allowed_origins=tuple(row["allowed_origins"]),
    )


async def _write_rows(conn: Conn, rows: BatchStream) -> None:
    await conn.execute(Q["flush_create_rows"])
    # One COPY per chunk: no statement lasts longer than reading one chunk from Redis.
    async for chunk in rows.chunks:
        await conn.copy_records_to_table("flush_rows", records=chunk, columns=FLUSH_COLUMNS)
    await conn.execute(Q["flush_analyze_rows"])
    rows.rows = _affected(await conn.execute(Q["flush_group_rows"]))
    await conn.execute(Q["flush_index_groups"])
    for first in range(0, rows.rows, ROWS_PER_STATEMENT):
        last = first + ROWS_PER_STATEMENT
        await conn.execute(Q["flush_add_page_views"], first, last)
        await conn.execute(Q["flush_add_page_views_daily"], first, last)
    site_days = await conn.fetch(Q["flush_site_days"])
    visitors = await rows.site_visitors([(r["site"], r["day"]) for r in site_days])
    await conn.execute(
        Q["add_site_views_daily"],
        [r["site"] for r in site_days],
        [date.fromisoformat(r["day"]) for r in site_days],
        [r["hits"] for r in site_days],
        list(visitors),
    )
    sites: dict[str, int] = {}
    for r in site_days:
        sites[r["site"]] = sites.get(r["site"], 0) + r["hits"]
    rows.hits = sum(sites.values())
    # Last, and in site order: these row locks are what a concurrent loader waits on.
    for site, hits in sorted(sites.items()):
        await conn.execute(Q["add_site_views"], site, hits)


def _affected(status: str) -> int:
    """Rows a statement wrote, from its command status ("INSERT 0 42", "SELECT 42")."""
    return int(status.rsplit(" ", 1)[1])


# --- Baselines (legacy counts) and reports: issue 6 ----------------------------------------

OUTBOX_CHUNK_PAGES = 1000
OUTBOX_FETCH_ROWS = 20


@dataclass(frozen=True)
class RejectedRow:
    """A CSV row (1-based line number) that was not imported, the field at fault and why."""

    line: int
    field: str
    reason: str


@dataclass(frozen=True)
class BaselineResult:
    """What a baseline change did in Postgres (committed when returned)."""

    change_id: int | None  # None: nothing changed
    rows_accepted: int
    pages_changed: int
    pages_new: int
    site_baseline_old: int
    site_baseline_new: int
    rejected_count: int
    rejected: list[RejectedRow]


@dataclass(frozen=True)
class OutboxChunk:
    """Baseline deltas of one change still to add to Redis' live totals of a site."""

    change_id: int
    chunk: int
    generation: str
    site_delta: int
    pages: list[str]
    deltas: list[int]


class UnknownSiteRow(Exception):
    """The site has no row in sites/site_views."""


class Baselines:
    """Baseline changes: set page and site baselines from rows, audited, with an outbox for
    the Redis side (see services/counting/baselines.py for the protocol)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def apply(
        self,
        site: str,
        rows: AsyncIterable[tuple[int, str, int]],
        *,
        site_total: int | None,
        source: str,
        changed_by: str,
        default_max_pages: int,
        generation: Callable[[], Awaitable[str | None]],
        report_rows: int,
    ) -> BaselineResult:
        """Set baselines to the (line, page, views) `rows` (streamed in with COPY) and the
        site's baseline to `site_total` (None: unchanged), in one transaction.

        Rows naming a page twice, or new pages beyond the site's page bound, are rejected.
        `generation` (the site's Redis load generation, None: not loaded) is asked under the
        site_views row lock; deltas are queued in baseline_outbox for it. Raises
        UnknownSiteRow; whatever `rows` or `generation` raise rolls everything back.
        """
        async with _translated(), self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    return await self._apply(
                        conn,
                        site,
                        rows,
                        site_total=site_total,
                        source=source,
                        changed_by=changed_by,
                        default_max_pages=default_max_pages,
                        generation=generation,
                        report_rows=report_rows,
                    )
            except BaseException:
                # COPY may have been cut mid-stream: never hand the connection back then.
                if not conn.is_closed():
                    conn.terminate()
                raise

    async def _apply(
        self,
        conn: Conn,
        site: str,
        rows: AsyncIterable[tuple[int, str, int]],
        *,
        site_total: int | None,
        source: str,
        changed_by: str,
        default_max_pages: int,
        generation: Callable[[], Awaitable[str | None]],
        report_rows: int,
    ) -> BaselineResult:
        await conn.execute(Q["baseline_site_lock"], site)
        current = await conn.fetchrow(Q["baseline_site"], site)
        if current is None:
            raise UnknownSiteRow(site)
        await conn.execute(Q["import_create_tables"])
        await conn.copy_records_to_table(
            "import_rows", records=rows, columns=("line", "page", "views")
        )
        await conn.execute(Q["import_reject_duplicates"])
        bound = default_max_pages if current["max_pages"] is None else current["max_pages"]
        if bound > 0:
            existing: int = await conn.fetchval(Q["count_site_pages"], site)
            await conn.execute(Q["import_reject_over_bound"], site, max(bound - existing, 0))
        await conn.execute(Q["import_find_changes"], site)
        counts = _one(await conn.fetchrow(Q["import_counts"]))
        rejected = [
            RejectedRow(r["line"], r["field"], r["reason"])
            for r in await conn.fetch(Q["import_rejected_rows"], report_rows)
        ]
        if counts["changed"]:
            await conn.execute(Q["import_apply_pages"], site)
        # Last, like a flush: a load of this site waits here until we commit, and the
        # generation read below cannot change before the commit.
        old_site: int = await conn.fetchval(Q["lock_site_baseline"], site)
        new_site = old_site if site_total is None else site_total
        change_id: int | None = None
        if counts["changed"] or new_site != old_site:
            gen = await generation()
            change = _one(
                await conn.fetchrow(
                    Q["insert_baseline_change"],
                    site,
                    source,
                    changed_by,
                    counts["changed"],
                    new_site - old_site,
                )
            )
            change_id = change["change_id"]
            at = change["changed_at"]
            if counts["changed"]:
                await conn.execute(Q["import_audit_pages"], change_id, site, changed_by, at)
            if new_site != old_site:
                await conn.execute(Q["set_site_baseline"], site, new_site)
                await conn.execute(
                    Q["audit_site_baseline"], change_id, site, old_site, new_site, changed_by, at
                )
            if gen is not None:
                if new_site != old_site:
                    await conn.execute(
                        Q["outbox_site_delta"], change_id, site, gen, new_site - old_site
                    )
                if counts["changed"]:
                    await conn.execute(
                        Q["outbox_page_deltas"], change_id, site, gen, OUTBOX_CHUNK_PAGES
                    )
        return BaselineResult(
            change_id=change_id,
            rows_accepted=counts["accepted"],
            pages_changed=counts["changed"],
            pages_new=counts["new_pages"],
            site_baseline_old=old_site,
            site_baseline_new=new_site,
            rejected_count=counts["rejected"],
            rejected=rejected,
        )

    async def outbox(self, site: str) -> AsyncIterator[OutboxChunk]:
        """The site's queued Redis deltas, oldest change first, chunk by chunk."""
        after = (0, -1)
        while True:
            async with _translated(), self.pool.acquire() as conn:
                found = await conn.fetch(Q["outbox_next"], site, *after, OUTBOX_FETCH_ROWS)
            for r in found:
                yield OutboxChunk(
                    r["change_id"],
                    r["chunk"],
                    r["generation"],
                    r["site_delta"],
                    list(r["pages"]),
                    list(r["deltas"]),
                )
            if len(found) < OUTBOX_FETCH_ROWS:
                return
            after = (found[-1]["change_id"], found[-1]["chunk"])

    async def outbox_done(self, change_id: int, chunk: int) -> None:
        """Drop a chunk that Redis has (or no longer needs)."""
        async with _translated(), self.pool.acquire() as conn:
            await conn.execute(Q["outbox_delete"], change_id, chunk)

    async def outbox_sites(self) -> list[str]:
        """Sites with chunks still queued for Redis."""
        async with _translated(), self.pool.acquire() as conn:
            return [r["site"] for r in await conn.fetch(Q["outbox_sites"])]

    async def outbox_size(self, site: str) -> int:
        """Chunks of the site still queued for Redis."""
        async with _translated(), self.pool.acquire() as conn:
            n: int = await conn.fetchval(Q["outbox_count"], site)
            return n


def _one(row: asyncpg.Record | None) -> asyncpg.Record:
    if row is None:
        raise DatabaseUnavailable("a query that always answers one row answered none")
    return row


@dataclass(frozen=True)
class SiteTotals:
    """A site's counted views and baseline in Postgres, and its time zone."""

    views: int
    baseline: int
    timezone: str


class Reports:
    """Report queries: Postgres only, days being the site's local days."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def totals(self, site: str) -> SiteTotals | None:
        """The site's totals and time zone; None for an unknown site."""
        async with _translated(), self.pool.acquire() as conn:
            row = await conn.fetchrow(Q["report_totals"], site)
        return None if row is None else SiteTotals(row["views"], row["baseline"], row["timezone"])

    async def top_pages(
        self, site: str, first: date, last: date, limit: int
    ) -> tuple[list[tuple[str, int]], int]:
        """The `limit` most viewed pages between two local days (inclusive), and the site's
        views in that range."""
        async with _translated(), self.pool.acquire() as conn:
            rows = await conn.fetch(Q["report_top_pages"], site, first, last, limit)
            total: int = await conn.fetchval(Q["report_range_total"], site, first, last)
        return [(r["page"], r["views"]) for r in rows], total

    async def daily(
        self, site: str, first: date, last: date, page: str | None
    ) -> list[tuple[date, int, int]]:
        """(day, views, visitors) for each local day of the range, zeros included; the
        site's, or one page's."""
        async with _translated(), self.pool.acquire() as conn:
            if page is None:
                rows = await conn.fetch(Q["report_site_daily"], site, first, last)
            else:
                rows = await conn.fetch(Q["report_page_daily"], site, page, first, last)
        return [(r["day"], r["views"], r["visitors"]) for r in rows]
