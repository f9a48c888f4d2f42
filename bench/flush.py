"""The flusher against a bare asyncpg COPY upsert of the same rows (issue 7, figure 4).

Each step runs in its own process (bench/suite.py's `flusher` figure runs them), so that the
flusher's peak RSS is its own:

    python -m bench.flush prep  --redis URL --database URL --site S --pages N [--flushall]
    python -m bench.flush flush --redis URL --database URL [--tracemalloc]
    python -m bench.flush bare  --database URL --site S --pages N

- `prep` puts N dirty pages into Redis through the real path: the same core as
  `POST /v1/sites/{site}/hits/batch` (`LiveCounts.hit_batch`: hits.lua, 10,000 views a call,
  which loads the site from Postgres first). One view per page `news/article-<i>`, each by its
  own visitor, dedupe off: N pending (page, day) fields of one site, each with 1 hit and a
  visitor sketch of 1.
- `flush` times `Flusher.flush_once()` (the production flusher as `viewcounter flusher`
  builds it, WAITAOF included) once the clients are connected; it prints the seconds, the
  rows and hits of its report, its process's peak RSS (VmHWM) and, with `--tracemalloc`, the
  peak of Python allocations (tracemalloc slows it down: not for the rate).
- `bare` builds the same (site, page, day, hits, visitors) rows in memory (not timed), then
  times the plainest asyncpg version of the same writes, in one transaction: a temp table, one
  `copy_records_to_table` of all rows, ANALYZE, and one INSERT ... SELECT ... GROUP BY ... ON
  CONFLICT DO UPDATE per table (page_views, page_views_daily, site_views_daily; site_views
  with one UPDATE). No ledger, no Redis, no chunks.

Every step prints one line `FLUSHJSON {...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from services import clients
from services.config import Settings
from services.counter import startup
from services.counter.outcomes import Outcome
from services.counting import live
from services.db import ledger as db_ledger
from services.flusher.worker import Flusher

PREP_VIEWS_PER_CALL = 10_000


def page_id(i: int) -> str:
    """The page id of the i-th dirty page."""
    return f"news/article-{i}"


def vm_kib(field: str) -> int:
    """A Vm* line of /proc/self/status (VmRSS, VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def emit(**values: Any) -> None:
    """The machine-readable result line."""
    print("FLUSHJSON " + json.dumps(values), flush=True)


def _settings(ns: argparse.Namespace, statement_timeout_s: float) -> Settings:
    """The bench's servers as settings (the rest at their defaults)."""
    return Settings(
        redis_url=ns.redis, database_url=ns.database, statement_timeout=statement_timeout_s
    )


async def prep(ns: argparse.Namespace) -> None:
    """N dirty pages of one site in Redis, through LiveCounts.hit_batch."""
    if ns.flushall:
        client = aioredis.Redis.from_url(ns.redis)
        await client.flushall()
        await client.aclose()
    # A command's clients; a slow prep of many pages may take long in Postgres.
    opened = await clients.connect(_settings(ns, 300), clients.COMMAND)
    counts = live.LiveCounts(opened.hits, opened.db.sites, dedupe_window_s=0)
    started = time.perf_counter()
    counted = 0
    try:
        for start in range(0, ns.pages, PREP_VIEWS_PER_CALL):
            views = [
                live.View(page_id(i), visitor=f"reader-{i}")
                for i in range(start, min(start + PREP_VIEWS_PER_CALL, ns.pages))
            ]
            outcomes = await counts.hit_batch(ns.site, views)
            counted += outcomes.get(Outcome.COUNTED, 0)
    finally:
        await opened.aclose()
    if counted != ns.pages:
        raise SystemExit(f"prep: {counted} of {ns.pages} views counted")
    emit(step="prep", pages=ns.pages, seconds=round(time.perf_counter() - started, 3))


async def flush(ns: argparse.Namespace) -> None:
    """One timed Flusher.flush_once()."""
    # As services/flusher/main.py builds it.
    opened = await clients.connect(_settings(ns, 30), clients.FLUSHER)
    await startup.register_scripts(opened.redis)
    flusher = Flusher(
        opened.flush, opened.baselines, opened.db.ledger, opened.db.baselines, interval_s=1
    )
    try:
        await opened.db.sites.ping()
        found = time.perf_counter()
        await (
            opened.flush.find_work()
        )  # read-only; timed apart: flush_once starts with the same SCAN
        find_work_s = time.perf_counter() - found
        rss_before = vm_kib("VmRSS")
        if ns.tracemalloc:
            tracemalloc.start()
        started = time.perf_counter()
        report = await flusher.flush_once()
        seconds = time.perf_counter() - started
        traced_peak = tracemalloc.get_traced_memory()[1] if ns.tracemalloc else None
        await flusher.release_leases()
    finally:
        await opened.aclose()
    emit(
        step="flush",
        seconds=round(seconds, 3),
        rows=report.rows,
        hits=report.hits,
        batches=report.batches,
        find_work_s=round(find_work_s, 3),
        rss_before_kib=rss_before,
        peak_rss_kib=vm_kib("VmHWM"),
        tracemalloc_peak_bytes=traced_peak,
    )


# The bare side: the whole batch in one COPY and one statement per table, as one would write
# it with nothing else to care about (ANALYZE: without statistics on the temporary table
# Postgres hashes and spills, then sorts again, ~0.5 s slower per 200,000 rows).
BARE_SQL = (
    """
    CREATE TEMP TABLE bare_rows (site text NOT NULL, page text NOT NULL, day text NOT NULL,
                                 hits bigint NOT NULL, visitors bigint NOT NULL) ON COMMIT DROP
    """,
    "ANALYZE bare_rows",
    """
    INSERT INTO page_views AS pv (site, page, views)
    SELECT site, page, sum(hits)::bigint FROM bare_rows GROUP BY site, page ORDER BY site, page
    ON CONFLICT (site, page) DO UPDATE SET views = pv.views + EXCLUDED.views, last_seen = now()
    """,
    """
    INSERT INTO page_views_daily AS d (site, page, day, views, visitors)
    SELECT site, page, day::date, sum(hits)::bigint, max(visitors) FROM bare_rows
    GROUP BY site, page, day ORDER BY site, page, day
    ON CONFLICT (site, page, day) DO UPDATE SET
        views = d.views + EXCLUDED.views, visitors = GREATEST(d.visitors, EXCLUDED.visitors)
    """,
    """
    INSERT INTO site_views_daily AS d (site, day, views, visitors)
    SELECT site, day::date, sum(hits)::bigint, sum(visitors)::bigint FROM bare_rows
    GROUP BY site, day ORDER BY site, day
    ON CONFLICT (site, day) DO UPDATE SET
        views = d.views + EXCLUDED.views, visitors = GREATEST(d.visitors, EXCLUDED.visitors)
    """,
    """
    UPDATE site_views sv SET views = sv.views + t.hits, updated_at = now()
    FROM (SELECT site, sum(hits)::bigint AS hits FROM bare_rows GROUP BY site) t
    WHERE sv.site = t.site
    """,
)


async def bare(ns: argparse.Namespace) -> None:
    """The same rows with asyncpg alone: temp table, one COPY, one upsert per table."""
    day = datetime.now(UTC).date().isoformat()  # the bench site's time zone is UTC
    records = [(ns.site, page_id(i), day, 1, 1) for i in range(ns.pages)]
    conn = await asyncpg.connect(ns.database)
    try:
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(BARE_SQL[0])
            await conn.copy_records_to_table(
                "bare_rows", records=records, columns=db_ledger.FLUSH_COLUMNS
            )
            for sql in BARE_SQL[1:]:
                await conn.execute(sql)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    emit(step="bare", seconds=round(seconds, 3), rows=len(records), hits=len(records))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("step", choices=("prep", "flush", "bare"))
    parser.add_argument("--redis", default="")
    parser.add_argument("--database", required=True)
    parser.add_argument("--site", default="fb")
    parser.add_argument("--pages", type=int, default=200_000)
    parser.add_argument("--flushall", action="store_true", help="prep: FLUSHALL Redis first")
    parser.add_argument("--tracemalloc", action="store_true", help="flush: trace allocations")
    ns = parser.parse_args(argv)
    steps = {"prep": prep, "flush": flush, "bare": bare}
    asyncio.run(steps[ns.step](ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
