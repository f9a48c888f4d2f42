"""The flush ledger: a batch's deltas added to the totals, and its id recorded, exactly once.

A batch comes from the flusher as a stream of rows read from a Redis snapshot. Its id is
claimed first, the rows are COPYed in, and before COMMIT the flusher confirms (BatchChecks)
that Redis still holds the live totals the batch was read from.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from services.db import pool as db_pool
from services.db import queries
from services.db.errors import GenerationChanged

Q = queries.load("ledger")
ROWS_PER_STATEMENT = 20_000

DailyRow = tuple[str, str, str, int, int]
"""(site, page, local day YYYY-MM-DD, hits, distinct visitors of the page that day)."""
FLUSH_COLUMNS = ("site", "page", "day", "hits", "visitors")


class BatchChecks(Protocol):
    """What the ledger asks Redis while a batch's transaction is open (the flusher answers)."""

    async def site_visitors(self, site_days: Sequence[tuple[str, str]]) -> Sequence[int]:
        """The distinct-visitor estimates of the (site, day) buckets, in order.

        Asked once, after every row of the batch is in: the estimates then include every hit
        of the batch (they are absolute estimates, not deltas, and the larger one is kept).
        """
        ...

    async def still_current(self) -> bool:
        """Whether Redis still holds the live totals the batch was read from.

        Asked last, with the sites' totals rows locked, just before COMMIT: a load of a site
        into Redis waits on that lock, so if Redis lost a site's data and was refilled from
        Postgres meanwhile, the refill already holds what the batch would add; False then
        rolls the batch back (GenerationChanged).
        """
        ...


class BatchStream:
    """A batch's deltas for `apply_batch`, streamed in chunks so that memory is bounded by the
    chunk, not by the batch.

    `chunks` yields lists of DailyRow; a (site, page, day) may come more than once: its hits
    add up and its largest visitor estimate (an absolute estimate, not a delta) wins.
    `sites` are the sites the batch covers. `hits` and `rows` (distinct (site, page, day)
    buckets) are what was written, once it was.
    """

    def __init__(self, sites: Iterable[str], chunks: AsyncIterable[Sequence[DailyRow]]) -> None:
        self.sites = frozenset(sites)
        self.chunks = chunks
        self.hits = 0
        self.rows = 0


@dataclass(frozen=True)
class Applied:
    """The batch is now in Postgres, committed by this call."""


@dataclass(frozen=True)
class AlreadyApplied:
    """The ledger had the batch id already; `keys` are the snapshots that batch covered."""

    keys: list[str]


class Ledger:
    """Flush batches over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def batch_keys(self, batch_id: str) -> list[str] | None:
        """Snapshot keys the ledger recorded for `batch_id`, or None when it was never applied."""
        async with db_pool.connection(self.pool) as conn:
            keys: list[str] | None = await conn.fetchval(Q["batch_keys"], batch_id)
            return keys

    async def apply_batch(
        self,
        batch_id: str,
        snapshot_keys: Sequence[str],
        rows: BatchStream,
        checks: BatchChecks,
    ) -> Applied | AlreadyApplied:
        """Add a batch's deltas and record its id, in one transaction; exactly once per id.

        The rows are streamed in with COPY (into a temporary table) once the id is claimed;
        whatever reading them or `checks` raise rolls everything back, and so does
        `checks.still_current()` answering False (GenerationChanged).
        """
        # GenerationChanged rolls back cleanly and leaves the connection fine.
        async with db_pool.streaming_transaction(self.pool, clean=(GenerationChanged,)) as conn:
            # Claimed first: a second flusher with the same batch waits here for our COMMIT,
            # then finds the id taken. Its size is known once the rows are in.
            claimed = await conn.fetchval(Q["claim_batch"], batch_id, 0, 0, list(snapshot_keys))
            if claimed is None:
                keys: list[str] = await conn.fetchval(Q["batch_keys"], batch_id)
                return AlreadyApplied(keys)
            await _write_rows(conn, rows, checks)
            await conn.execute(Q["record_batch_size"], batch_id, rows.hits, rows.rows)
            if not await checks.still_current():
                raise GenerationChanged(batch_id)
        return Applied()


async def _write_rows(conn: db_pool.Conn, rows: BatchStream, checks: BatchChecks) -> None:
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
    visitors = await checks.site_visitors([(r["site"], r["day"]) for r in site_days])
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
    # Last, and in site order: these row locks are what a concurrent loader waits on. Two
    # statements, however many sites (10,000 small sites: not 10,000 round trips).
    ordered = sorted(sites)
    await conn.execute(Q["lock_site_views"], ordered)
    await conn.execute(Q["add_site_views"], ordered, [sites[site] for site in ordered])


def _affected(status: str) -> int:
    """Rows a statement wrote, from its command status ("INSERT 0 42", "SELECT 42")."""
    return int(status.rsplit(" ", 1)[1])
