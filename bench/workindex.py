"""The flusher's cost against the work, not the keyspace (issue 15): idle passes with many dedupe
marks, and flush pass time against sites with work and against dirty pages.

Each step runs in its own process (bench/suite.py's `idle` and `curves` figures run them) and
prints one line `WORKJSON {...}`:

    python -m bench.workindex idle  --redis URL --database URL [--marks N] [--passes N]
    python -m bench.workindex sites --redis URL --database URL --sites N
    python -m bench.workindex pages --redis URL --database URL --pages N

- `idle`: FLUSHALL; one site loaded; a flusher as `viewcounter flusher` builds it makes its
  first pass (the once-per-Redis upgrade SCAN), then --passes idle passes are timed with
  Redis' `INFO cpu` (used_cpu_sys + used_cpu_user) read before and after: first with no dedupe
  marks, then again after --marks live dedupe marks (`{vc:SITE}:seen:TOKEN`, the keys hits.lua
  writes today, 1 h TTL) were written and Redis settled; in the order none, marks, marks,
  none (FLUSHALL between), each side's two runs summed (its AOF rewrite done, then 3 s for
  its incremental rehashing). Redis' own background work (serverCron: active expiry,
  rehashing) grows with the keyspace whether or not a flusher runs, so each side also reads
  Redis' CPU over a sleep as long as its passes took, and reports both: raw, and net of that
  background. For scale, one SCAN of the whole keyspace (what a pass cost before the work
  index) is timed the same way.
- `sites`: FLUSHALL; N sites inserted in Postgres and loaded into Redis (HitStore.load, as a
  first hit does), 3 views each through LiveCounts.hit_batch (two pages), then one timed
  `flush_once()`.
- `pages`: FLUSHALL; N dirty pages of one site (bench/flush.py's prep: LiveCounts.hit_batch,
  10,000 views a call), then one timed `flush_once()`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from services import clients
from services.config import Settings
from services.counter import keys, startup
from services.counter.siteconfig import SiteConfig
from services.counting import live
from services.flusher.worker import Flusher

SITE = "wi"
MARKS_PER_CALL = 100_000
# Writes N dedupe marks under one prefix: a bench fixture, not production code.
MARKS_LUA = """
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  redis.call('SET', ARGV[1] .. i, '1', 'EX', 3600)
end
return 1
"""


def emit(**values: Any) -> None:
    """The machine-readable result line."""
    print("WORKJSON " + json.dumps(values), flush=True)


def _settings(ns: argparse.Namespace) -> Settings:
    return Settings(redis_url=ns.redis, database_url=ns.database, statement_timeout=300)


async def _cpu(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _flusher(ns: argparse.Namespace) -> tuple[clients.Clients, Flusher]:
    opened = await clients.connect(_settings(ns), clients.FLUSHER)
    await startup.register_scripts(opened.redis)
    flusher = Flusher(
        opened.flush, opened.baselines, opened.db.ledger, opened.db.baselines, interval_s=5
    )
    return opened, flusher


async def _fresh(ns: argparse.Namespace, sites: Sequence[str]) -> None:
    """FLUSHALL, and `sites` in Postgres (new ones added)."""
    redis = aioredis.Redis.from_url(ns.redis)
    await redis.flushall()
    await redis.aclose()
    conn = await asyncpg.connect(ns.database)
    try:
        await conn.execute(
            "INSERT INTO sites (site) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", sites
        )
        await conn.execute(
            "INSERT INTO site_views (site) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            sites,
        )
    finally:
        await conn.close()


async def _no_pages() -> AsyncIterator[list[tuple[str, int]]]:
    for chunk in ():
        yield chunk


async def _load(ns: argparse.Namespace, sites: Sequence[str]) -> None:
    opened = await clients.connect(_settings(ns), clients.COMMAND)
    try:
        for start in range(0, len(sites), 50):
            await asyncio.gather(
                *(
                    opened.hits.load(s, 0, SiteConfig(), _no_pages())
                    for s in sites[start : start + 50]
                )
            )
    finally:
        await opened.aclose()


async def _settle(redis: aioredis.Redis) -> None:
    """Wait for the AOF rewrite the writes triggered, then for the rehashing after it."""
    while True:
        info = await redis.info("persistence")
        if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)


async def _write_marks(redis: aioredis.Redis, marks: int) -> None:
    for first in range(0, marks, MARKS_PER_CALL):
        last = min(first + MARKS_PER_CALL, marks) - 1
        await redis.eval(MARKS_LUA, 0, f"{keys.tag(SITE)}:seen:bench-", first, last)


async def _idle_passes(redis: aioredis.Redis, flusher: Flusher, passes: int) -> dict[str, float]:
    await _settle(redis)
    cpu_before, wall = await _cpu(redis), time.perf_counter()
    for _ in range(passes):
        report = await flusher.flush_once()
        assert report.batches == 0
    wall = time.perf_counter() - wall
    cpu = await _cpu(redis) - cpu_before
    cpu_before = await _cpu(redis)
    await asyncio.sleep(wall)
    background = await _cpu(redis) - cpu_before
    return {
        "redis_cpu_s": cpu,
        "background_s": background,
        "net_s": max(cpu - background, 0.0),
        "wall_s": wall,
    }


async def idle(ns: argparse.Namespace) -> None:
    """Redis CPU of idle passes, without and with ns.marks live dedupe marks, in the order
    none, marks, marks, none (so a load that drifts during the run falls on both sides)."""
    await _fresh(ns, [SITE])
    await _load(ns, [SITE])
    redis = aioredis.Redis.from_url(ns.redis)
    opened, flusher = await _flusher(ns)
    results: dict[str, Any] = {"passes": ns.passes, "marks": ns.marks}
    runs: dict[str, list[dict[str, float]]] = {"none": [], "marks": []}
    try:
        await flusher.flush_once()  # the first pass of a process: the upgrade check
        has_marks = False
        for side in ("none", "marks", "marks", "none"):
            if side == "marks" and not has_marks:
                await _write_marks(redis, ns.marks)
                has_marks = True
                results["dbsize"] = await redis.dbsize()
            elif side == "none" and has_marks:
                await redis.flushall()
                await _load(ns, [SITE])
                has_marks = False
            runs[side].append(await _idle_passes(redis, flusher, ns.passes))
        for side, measured in runs.items():
            results[side] = {k: round(sum(m[k] for m in measured), 4) for k in measured[0]}
            results[side]["runs"] = [round(m["net_s"], 4) for m in measured]
        # For scale: the SCAN a pass ran before the work index, once (over the marks).
        await _write_marks(redis, ns.marks)
        await _settle(redis)
        cpu_before, wall = await _cpu(redis), time.perf_counter()
        found = 0
        async for _ in redis.scan_iter(match=keys.WORK_KEYS_PATTERN, count=1000):
            found += 1
        results["scan_once"] = {
            "redis_cpu_s": round(await _cpu(redis) - cpu_before, 4),
            "wall_s": round(time.perf_counter() - wall, 3),
            "found": found,
        }
        await flusher.release_leases()
    finally:
        await opened.aclose()
        await redis.aclose()
    emit(step="idle", **results)


async def sites(ns: argparse.Namespace) -> None:
    """One timed pass over ns.sites sites with a few hits each."""
    names = [f"ws{i:06d}" for i in range(ns.sites)]
    await _fresh(ns, names)
    await _load(ns, names)
    opened, flusher = await _flusher(ns)
    try:
        await opened.flush.index_unindexed()  # (the upgrade check, not timed)
        flusher._indexed = True  # noqa: SLF001 - a bench drives the real pass
        counts = live.LiveCounts(opened.hits, opened.db.sites, dedupe_window_s=0)

        async def visit(i: int) -> None:
            views = [live.View("home", f"r{i}"), live.View("home", f"q{i}")]
            views.append(live.View(f"p{i % 7}", f"r{i}"))
            await counts.hit_batch(names[i], views, f"bench-{i}")

        for start in range(0, ns.sites, 50):
            await asyncio.gather(*(visit(i) for i in range(start, min(start + 50, ns.sites))))
        started = time.perf_counter()
        report = await flusher.flush_once()
        seconds = time.perf_counter() - started
        await flusher.release_leases()
    finally:
        await opened.aclose()
    emit(
        step="sites",
        sites=ns.sites,
        seconds=round(seconds, 3),
        batches=report.batches,
        units=report.units,
        hits=report.hits,
    )


async def pages(ns: argparse.Namespace) -> None:
    """One timed pass over ns.pages dirty pages of one site."""
    await _fresh(ns, [SITE])
    opened = await clients.connect(_settings(ns), clients.COMMAND)
    counts = live.LiveCounts(opened.hits, opened.db.sites, dedupe_window_s=0)
    try:
        for start in range(0, ns.pages, 10_000):
            views = [
                live.View(f"news/article-{i}", f"reader-{i}")
                for i in range(start, min(start + 10_000, ns.pages))
            ]
            await counts.hit_batch(SITE, views, f"prep-{time.time_ns()}")
    finally:
        await opened.aclose()
    opened, flusher = await _flusher(ns)
    try:
        await opened.flush.index_unindexed()
        flusher._indexed = True  # noqa: SLF001 - a bench drives the real pass
        started = time.perf_counter()
        report = await flusher.flush_once()
        seconds = time.perf_counter() - started
        await flusher.release_leases()
    finally:
        await opened.aclose()
    emit(step="pages", pages=ns.pages, seconds=round(seconds, 3), rows=report.rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("step", choices=("idle", "sites", "pages"))
    parser.add_argument("--redis", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--marks", type=int, default=1_000_000)
    parser.add_argument("--passes", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=1000)
    ns = parser.parse_args(argv)
    steps = {"idle": idle, "sites": sites, "pages": pages}
    asyncio.run(steps[ns.step](ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
