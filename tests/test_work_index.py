"""The work index: the flusher finds work without SCAN, an older release's unindexed work is
found once, and many units go in one batch (10,000 sites flushed exactly once)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter import keys
from services.counter.siteconfig import SiteConfig
from services.counting.live import View
from services.flusher.passes import batch_id
from services.flusher.worker import UNITS_PER_BATCH, Flusher
from tests.support.checks import assert_consistent, totals
from tests.support.stack import flusher_for, live_counts
from tests.test_flush import expect, flusher_stores, leftover_snapshots, send_hits


async def scan_calls(redis: aioredis.Redis) -> int:
    """How many SCAN commands Redis has run since its start (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


async def test_passes_find_work_through_the_index_never_by_scan(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        # Keys that are never work: a pass must not walk them.
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(2000):
                pipe.set(f"{keys.tag(site)}:seen:mark-{i}", 1, ex=600)
            await pipe.execute()
        counted: Counter[str] = Counter()
        await flusher.flush_once()  # the first pass of a process may scan once (the upgrade)
        scans = await scan_calls(redis)
        await send_hits(api, site, ["a", "b", "a"], counted)
        work = await flusher._store.find_work()
        assert set(work.units) == {site} and work.batches == {}
        first = await flusher.flush_once()
        idle = [await flusher.flush_once() for _ in range(3)]
        assert await scan_calls(redis) == scans  # no SCAN since
        # Everything flushed leaves the index: an idle pass finds nothing.
        assert await redis.zcard(keys.work_key(0)) == 0
        assert await redis.zcard(keys.snaps_key(0)) == 0
    finally:
        await redis.aclose()
    assert (first.hits, [r.batches for r in idle]) == (3, [0, 0, 0])
    expect(await totals(settings.database_url, site), counted)


async def test_an_older_releases_pending_work_is_found_once(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    """The upgrade: pending shards, learned titles and a dead flusher's snapshot that an older
    release left in Redis (no work index) are indexed by one SCAN, then flushed exactly."""
    counted: Counter[str] = Counter()
    await send_hits(api, site, ["a", "b"], counted)
    # A flusher of the older release froze them and died.
    dead = flusher_stores(settings)
    snapshots, _ = await dead.flush.snapshot({site: batch_id("oldflusher", 1, 0.0)}, None)
    await dead.aclose()
    assert snapshots[0].refs
    await send_hits(api, site, ["a", "c"], counted)  # pending again
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        await redis.hset(keys.titles_key(site), "c", "Page C")  # a title learned
        # The older release wrote no index: drop it, and the note that it was complete.
        await redis.delete(keys.work_key(0), keys.snaps_key(0), keys.WORK_INDEXED_KEY)
        assert await redis.exists(keys.pending_key(site, keys.shard_of("a")))
        scans = await scan_calls(redis)
        async with flusher_for(settings) as first, flusher_for(settings) as second:
            report = await first.flush_once()
            upgraded = await scan_calls(redis)
            again = await second.flush_once()  # another process: Redis says it is done
            assert await scan_calls(redis) == upgraded > scans
        assert await redis.get(keys.WORK_INDEXED_KEY) == "1"
    finally:
        await redis.aclose()
    assert (report.hits, report.titles, again.hits) == (4, 1, 0)
    expect(await totals(settings.database_url, site), counted)
    assert await leftover_snapshots(settings) == []


async def test_a_snapshot_left_by_a_dead_flusher_is_found_through_its_index(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    counted: Counter[str] = Counter()
    await send_hits(api, site, ["a", "b", "c"], counted)
    dead = flusher_stores(settings)
    snapshots, _ = await dead.flush.snapshot({site: batch_id("deadbeef", 7, 0.0)}, None)
    await dead.aclose()
    work = await flusher._store.find_work()
    # Frozen: the unit left the work index, its snapshots are in theirs.
    assert work.units == {}
    assert sorted(r.name for r in work.batches[batch_id("deadbeef", 7, 0.0)]) == sorted(
        r.name for r in snapshots[0].refs
    )
    report = await flusher.flush_once()
    assert (report.batches, report.hits) == (1, 3)
    expect(await totals(settings.database_url, site), counted)
    assert (await flusher._store.find_work()).batches == {}


SITES_MANY = 10_000


@pytest.mark.timeout(300)
async def test_ten_thousand_sites_are_flushed_exactly_once_in_few_batches(
    settings: Settings,
) -> None:
    sites = [f"s{i:05d}" for i in range(SITES_MANY)]
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("INSERT INTO sites (site) SELECT unnest($1::text[])", sites)
        await conn.execute("INSERT INTO site_views (site) SELECT unnest($1::text[])", sites)
    finally:
        await conn.close()
    clock = [time.time()]
    # Each site loaded into Redis as a load of an empty site writes it (HitStore.load, as
    # LiveCounts does on a first hit), 50 at a time: only the flush is under test here.
    stores = Clients(counter_client.connect(settings.redis_url, max_connections=8, timeout_s=5))
    config = SiteConfig(timezone="UTC")

    async def no_pages() -> AsyncIterator[list[tuple[str, int]]]:
        for chunk in ():
            yield chunk

    try:
        for start in range(0, SITES_MANY, 50):
            await asyncio.gather(
                *(stores.hits.load(s, 0, config, no_pages()) for s in sites[start : start + 50])
            )
    finally:
        await stores.aclose()
    async with live_counts(settings, clock) as counts:

        async def visit(i: int) -> None:
            # A few hits each, on a page or two: loads the site, then one call.
            site = sites[i]
            views = [View("home", f"r{i}"), View("home", f"q{i}"), View(f"p{i % 7}", f"r{i}")]
            outcomes = await counts.hit_batch(site, views, f"many-{site}")
            assert all(o.name == "COUNTED" for o in outcomes), outcomes

        for start in range(0, SITES_MANY, 50):
            await asyncio.gather(*(visit(i) for i in range(start, start + 50)))
    print(f"prep {time.time() - clock[0]:.1f} s")
    async with flusher_for(settings) as flusher:
        report = await flusher.flush_once()
        print(f"flushed {time.time() - clock[0]:.1f} s")
        after = await flusher.flush_once()
    assert (report.units, report.hits, report.discarded_hits) == (SITES_MANY, 3 * SITES_MANY, 0)
    assert report.batches == -(-SITES_MANY // UNITS_PER_BATCH)  # one transaction per 1,000
    assert after.batches == 0
    conn = await asyncpg.connect(settings.database_url)
    try:
        wrong = await conn.fetchval(
            "SELECT count(*) FROM site_views WHERE site = ANY($1) AND views <> 3", sites
        )
        ledger = await conn.fetchrow("SELECT count(*) AS n, sum(hits) AS hits FROM flush_batches")
        pages = await conn.fetchval("SELECT sum(views) FROM page_views WHERE site = ANY($1)", sites)
    finally:
        await conn.close()
    assert (wrong, pages) == (0, 3 * SITES_MANY)
    assert (ledger["n"], ledger["hits"]) == (report.batches, 3 * SITES_MANY)
    for site in (sites[0], sites[-1]):
        stored = await totals(settings.database_url, site)
        assert_consistent(stored)
        assert stored.site_views == 3


async def test_the_watch_reads_the_age_of_the_oldest_unflushed_unit_from_redis(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    store = flusher._store
    (node,) = (await store.oldest_work()).keys()
    assert await store.oldest_work() == {node: 0.0}  # nothing pending
    await send_hits(api, site, ["a"], Counter())
    first = (await store.oldest_work())[node]
    await asyncio.sleep(0.3)
    await send_hits(api, site, ["b"], Counter())  # a later hit keeps the first-dirty time
    later = (await store.oldest_work())[node]
    assert first is not None and later is not None and later >= first + 0.3
    # Frozen but not yet in Postgres (a flusher died after its snapshot): still unflushed.
    dead = flusher_stores(settings)
    await dead.flush.snapshot({site: batch_id("deadbeef", 1, 0.0)}, None)
    await dead.aclose()
    frozen = (await store.oldest_work())[node]
    assert frozen is not None and frozen >= later
    await flusher.flush_once()
    assert await store.oldest_work() == {node: 0.0}
