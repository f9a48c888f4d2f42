"""Baselines (legacy counts): set page and site baselines from rows, audited, with an outbox
of their deltas for Redis (see services/counting/baselines.py for the protocol). Issue 6."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from services.db import audit, queries
from services.db import pool as db_pool
from services.db.errors import DatabaseUnavailable, UnknownSiteRow

Q = queries.load("baselines")
Row = tuple[int, str, int, str | None]
"""A row of an import: (line, page, baseline, admin title or None: unchanged)."""
OUTBOX_CHUNK_PAGES = 1000
OUTBOX_FETCH_ROWS = 20
# An audit entry lists at most this many changed pages (baseline_audit keeps them all).
AUDIT_LISTED_PAGES = 100


@dataclass(frozen=True)
class BaselineChange:
    """Who changes a site's baselines, through what (`source`: import, page), and the site
    total's new baseline (None: unchanged). `changed_by` is the baseline trail's name for
    them (baseline_changes), `author` the audit log's."""

    site: str
    site_total: int | None
    source: str
    changed_by: str
    author: audit.Author


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
    titles_set: int = 0  # admin titles the rows set or changed


@dataclass(frozen=True)
class OutboxChunk:
    """Baseline deltas of one change still to add to Redis' live totals of a site."""

    change_id: int
    chunk: int
    generation: str
    site_delta: int
    pages: list[str]
    deltas: list[int]


class Baselines:
    """Baseline changes and their outbox over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def apply(
        self,
        change: BaselineChange,
        rows: AsyncIterable[Row],
        *,
        default_max_pages: int,
        generation: Callable[[], Awaitable[str | None]],
        report_rows: int,
    ) -> BaselineResult:
        """Set baselines (and admin titles, where a row has one) to the `rows` (streamed in
        with COPY) and the
        site's baseline to `change.site_total` (None: unchanged), in one transaction.

        Rows naming a page twice, or new pages beyond the site's page bound, are rejected.
        `generation` (the site's Redis load generation, None: not loaded) is asked under the
        site_views row lock; deltas are queued in baseline_outbox for it. Raises
        UnknownSiteRow; whatever `rows` or `generation` raise rolls everything back.
        """
        site = change.site
        async with db_pool.streaming_transaction(self.pool) as conn:
            await conn.execute(Q["baseline_site_lock"], site)
            current = await conn.fetchrow(Q["baseline_site"], site)
            if current is None:
                raise UnknownSiteRow(site)
            await conn.execute(Q["import_create_tables"])
            await conn.copy_records_to_table(
                "import_rows", records=rows, columns=("line", "page", "views", "title")
            )
            bound = default_max_pages if current["max_pages"] is None else current["max_pages"]
            counts, rejected = await _stage_changes(conn, site, bound, report_rows)
            if counts["changed"]:
                await conn.execute(Q["import_apply_pages"], site)
            titles_set = _affected(await conn.execute(Q["import_apply_titles"], site))
            # Last, like a flush: a load of this site waits here until we commit, and the
            # generation read below cannot change before the commit.
            old_site: int = await conn.fetchval(Q["lock_site_baseline"], site)
            new_site = old_site if change.site_total is None else change.site_total
            change_id: int | None = None
            if counts["changed"] or new_site != old_site:
                change_id = await _record_change(
                    conn,
                    change,
                    pages_changed=counts["changed"],
                    old_site=old_site,
                    new_site=new_site,
                    generation=await generation(),
                )
            await _log(conn, change, counts, change_id, old_site, new_site, titles_set)
        return BaselineResult(
            change_id=change_id,
            rows_accepted=counts["accepted"],
            pages_changed=counts["changed"],
            pages_new=counts["new_pages"],
            site_baseline_old=old_site,
            site_baseline_new=new_site,
            rejected_count=counts["rejected"],
            rejected=rejected,
            titles_set=titles_set,
        )

    async def outbox(self, site: str) -> AsyncIterator[OutboxChunk]:
        """The site's queued Redis deltas, oldest change first, chunk by chunk."""
        after = (0, -1)
        while True:
            async with db_pool.connection(self.pool) as conn:
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
        async with db_pool.connection(self.pool) as conn:
            await conn.execute(Q["outbox_delete"], change_id, chunk)

    async def outbox_sites(self) -> list[str]:
        """Sites with chunks still queued for Redis."""
        async with db_pool.connection(self.pool) as conn:
            return [r["site"] for r in await conn.fetch(Q["outbox_sites"])]

    async def outbox_size(self, site: str) -> int:
        """Chunks of the site still queued for Redis."""
        async with db_pool.connection(self.pool) as conn:
            n: int = await conn.fetchval(Q["outbox_count"], site)
            return n


async def _stage_changes(
    conn: db_pool.Conn, site: str, bound: int, report_rows: int
) -> tuple[db_pool.Record, list[RejectedRow]]:
    """Reject the staged rows that cannot be applied, and find the pages whose baseline
    changes; the counts (accepted, changed, new_pages, rejected) and the first rejections."""
    await conn.execute(Q["import_reject_duplicates"])
    if bound > 0:
        existing: int = await conn.fetchval(Q["count_site_pages"], site)
        await conn.execute(Q["import_reject_over_bound"], site, max(bound - existing, 0))
    await conn.execute(Q["import_find_changes"], site)
    counts = _one(await conn.fetchrow(Q["import_counts"]))
    rejected = [
        RejectedRow(r["line"], r["field"], r["reason"])
        for r in await conn.fetch(Q["import_rejected_rows"], report_rows)
    ]
    return counts, rejected


async def _record_change(
    conn: db_pool.Conn,
    change: BaselineChange,
    *,
    pages_changed: int,
    old_site: int,
    new_site: int,
    generation: str | None,
) -> int:
    """Record a change (its audit rows, the site's new baseline, and its deltas queued for
    Redis' `generation` of the site: none when Redis has not loaded it); its id."""
    site, changed_by = change.site, change.changed_by
    recorded = _one(
        await conn.fetchrow(
            Q["insert_baseline_change"],
            site,
            change.source,
            changed_by,
            pages_changed,
            new_site - old_site,
        )
    )
    change_id: int = recorded["change_id"]
    at = recorded["changed_at"]
    if pages_changed:
        await conn.execute(Q["import_audit_pages"], change_id, site, changed_by, at)
    if new_site != old_site:
        await conn.execute(Q["set_site_baseline"], site, new_site)
        await conn.execute(
            Q["audit_site_baseline"], change_id, site, old_site, new_site, changed_by, at
        )
    if generation is not None:
        if new_site != old_site:
            await conn.execute(
                Q["outbox_site_delta"], change_id, site, generation, new_site - old_site
            )
        if pages_changed:
            await conn.execute(
                Q["outbox_page_deltas"], change_id, site, generation, OUTBOX_CHUNK_PAGES
            )
    return change_id


async def _log(
    conn: db_pool.Conn,
    change: BaselineChange,
    counts: db_pool.Record,
    change_id: int | None,
    old_site: int,
    new_site: int,
    titles_set: int,
) -> None:
    """Log the change (an import, or one baseline set) in the audit log, in its transaction."""
    pages = await conn.fetch(Q["import_changed_pages"], AUDIT_LISTED_PAGES)
    detail: dict[str, object] = {
        "change_id": change_id,
        "rows_accepted": counts["accepted"],
        "rows_rejected": counts["rejected"],
        "pages_changed": counts["changed"],
        "pages_new": counts["new_pages"],
        "baselines": [{"page": r["page"], "old": r["old"], "new": r["new"]} for r in pages],
        "titles_set": titles_set,
    }
    if new_site != old_site:
        detail["site_baseline"] = {"old": old_site, "new": new_site}
    action: audit.Action = "import" if change.source == "import" else "baseline.set"
    await audit.record(conn, change.site, change.author, action, detail)


def _affected(status: str) -> int:
    """Rows a statement wrote, from its command status ("INSERT 0 42")."""
    return int(status.rsplit(" ", 1)[1])


def _one(row: db_pool.Record | None) -> db_pool.Record:
    if row is None:
        raise DatabaseUnavailable("a query that always answers one row answered none")
    return row
