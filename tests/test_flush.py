"""The flush protocol on real Redis and Postgres: exact totals, crashes between steps, takeovers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter import keys
from services.counter.flushstore import FlushStore
from services.counter.snapshots import SnapshotRef
from services.db import errors as db_errors
from services.db import ledger as db_ledger
from services.db import pool as db_pool
from services.flusher import worker
from services.flusher.passes import FlushReport, assigned_flusher, batch_id
from services.flusher.worker import Flusher
from tests.support.checks import Totals, assert_consistent, totals
from tests.support.stack import ADMIN_TOKEN, flusher_for, flusher_on


async def send_hits(
    client: httpx.AsyncClient, site: str, pages: list[str], counted: Counter[str]
) -> None:
    for page in pages:
        response = await client.post(f"/v1/sites/{site}/hits", json={"page": page})
        assert response.status_code == 200, response.text
        if response.json()["counted"]:
            counted[page] += 1


def expect(t: Totals, counted: Counter[str]) -> None:
    assert_consistent(t)
    assert t.pages == dict(counted)
    assert t.site_views == sum(counted.values())


async def test_concurrent_clients_land_in_postgres_exactly(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    clients, hits_each = 20, 40
    rng = random.Random(7)
    plans = [[f"article-{rng.randrange(60)}" for _ in range(hits_each)] for _ in range(clients)]
    counted: Counter[str] = Counter()
    samples: list[Totals] = []
    done = asyncio.Event()

    async def flush_and_sample() -> None:
        while not done.is_set():
            await flusher.flush_once()
            samples.append(await totals(settings.database_url, site))

    sampler = asyncio.create_task(flush_and_sample())
    await asyncio.gather(*(send_hits(api, site, plan, counted) for plan in plans))
    done.set()
    await sampler
    await flusher.flush_once()

    assert sum(counted.values()) == clients * hits_each
    for sample in samples:  # every committed state agrees with itself
        assert_consistent(sample)
    expect(await totals(settings.database_url, site), counted)
    live = await api.get(f"/v1/sites/{site}/counts", params={"page": sorted(counted)})
    assert live.json()["pages"] == dict(counted)


async def test_nothing_pending_means_no_batch(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    report = await flusher.flush_once()
    assert (report.batches, (await totals(settings.database_url, site)).batches) == (0, 0)


async def test_a_dead_flushers_snapshot_is_applied_once(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    counted: Counter[str] = Counter()
    await send_hits(api, site, ["a", "b", "a"], counted)
    # A flusher froze the pending deltas and died before Postgres saw them.
    dead = flusher_stores(settings)
    snapshots, _ = await dead.flush.snapshot({site: batch_id("deadbeef", 1, 0.0)}, None)
    await dead.aclose()
    assert snapshots[0].refs
    await send_hits(api, site, ["b"], counted)

    await flusher.flush_once()
    await flusher.flush_once()
    expect(await totals(settings.database_url, site), counted)
    assert await leftover_snapshots(settings) == []


class CrashBeforeDelete(FlushStore):
    """Dies right after COMMIT, before the snapshot is deleted (like kill -9 there)."""

    async def delete(self, refs: object) -> None:
        raise SystemExit("killed after commit")


def flusher_stores(settings: Settings, cls: type[FlushStore] = FlushStore) -> Clients:
    stores = Clients(counter_client.connect(settings.redis_url, max_connections=4, timeout_s=5))
    stores.flush = cls(stores.redis, stores.units)
    return stores


async def test_a_batch_committed_but_not_deleted_is_not_counted_twice(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    counted: Counter[str] = Counter()
    await send_hits(api, site, ["a", "a", "c"], counted)
    stores = flusher_stores(settings, CrashBeforeDelete)
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    crashing = flusher_on(stores, pool)
    try:
        with pytest.raises(SystemExit):
            await crashing.flush_once()
    finally:
        await pool.close()
        await stores.aclose()
    assert len(await leftover_snapshots(settings)) == len({keys.shard_of(p) for p in counted})
    assert (await flusher.flush_once()).batches == 0  # the dead flusher's lease still holds
    await leases_run_out(settings)

    await flusher.flush_once()  # takes the site over: the ledger has the batch already
    expect(await totals(settings.database_url, site), counted)
    assert await leftover_snapshots(settings) == []
    assert (await totals(settings.database_url, site)).batches == 1


async def test_a_takeover_of_a_half_frozen_batch_loses_nothing(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    # Pages on two different pending shards.
    first = "p0"
    second = next(f"p{i}" for i in range(1, 100) if keys.shard_of(f"p{i}") != keys.shard_of(first))
    counted: Counter[str] = Counter()
    await send_hits(api, site, [first, second, second], counted)
    batch = batch_id("slowpoke", 1, 0.0)
    stores = flusher_stores(settings)
    snapshots, _ = await stores.flush.snapshot({site: batch}, None)
    await stores.aclose()
    assert len(snapshots[0].refs) == 2
    first_ref = SnapshotRef(site, keys.shard_of(first), batch)
    # Another flusher took over the batch while only its first shard was frozen, and
    # committed it with that shard alone.
    async with flusher_for(settings) as other:
        await other._finish(batch, [first_ref], None, FlushReport())
    assert (await totals(settings.database_url, site)).pages == {first: 1}

    await flusher.flush_once()  # the original owner's retry: ledger has the batch, one key more
    expect(await totals(settings.database_url, site), counted)
    assert await leftover_snapshots(settings) == []


async def test_a_batch_read_before_redis_lost_its_data_is_rolled_back(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    counted: Counter[str] = Counter()
    await send_hits(api, site, ["a"], counted)
    async with flusher_for(settings) as f:
        await f.flush_once()
    await send_hits(api, site, ["a", "b"], counted)

    class RedisLostMeanwhile(db_ledger.Ledger):
        """Redis restarts empty and is refilled after the batch was read, before COMMIT."""

        async def apply_batch(self, *args: Any, **kwargs: Any) -> Any:
            client = aioredis.Redis.from_url(settings.redis_url)
            await client.flushall()
            await client.aclose()
            refilled = await api.get(f"/v1/sites/{site}/counts", params={"page": "a"})
            assert refilled.json()["pages"] == {"a": 1}
            return await super().apply_batch(*args, **kwargs)

    stores = flusher_stores(settings)
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    try:
        report = await flusher_on(stores, pool, RedisLostMeanwhile(pool)).flush_once()
    finally:
        await pool.close()
        await stores.aclose()

    assert (report.batches, report.discarded_hits) == (0, 2)
    t = await totals(settings.database_url, site)
    assert_consistent(t)
    assert t.pages == {"a": 1}
    live = await api.get(f"/v1/sites/{site}/counts", params={"page": "a"})
    assert live.json()["site_views"] == t.site_views == 1


async def test_two_flushers_at_once_count_exactly(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    counted: Counter[str] = Counter()
    stop = asyncio.Event()
    async with flusher_for(settings) as one, flusher_for(settings) as two:
        runs = [asyncio.create_task(f.run(stop)) for f in (one, two)]
        rng = random.Random(3)
        plans = [[f"x{rng.randrange(40)}" for _ in range(60)] for _ in range(10)]
        await asyncio.gather(*(send_hits(api, site, plan, counted) for plan in plans))
        stop.set()
        await asyncio.gather(*runs)
        await one.flush_once()
    expect(await totals(settings.database_url, site), counted)
    assert await leftover_snapshots(settings) == []


async def leases_run_out(settings: Settings) -> None:
    """What time does to a flusher that died: its leases expire, and its heartbeat drops out
    of the flushers alive (the live ones beat again on their next pass)."""
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        for key in [k async for k in client.scan_iter(match="{vc:*}:lease")]:
            await client.delete(key)
        await client.delete(keys.FLUSHERS_KEY)
    finally:
        await client.aclose()


async def keys_matching(settings: Settings, pattern: str) -> list[str]:
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return [k async for k in client.scan_iter(match=pattern)]
    finally:
        await client.aclose()


async def leftover_snapshots(settings: Settings) -> list[str]:
    return await keys_matching(settings, "{vc:*}:snap:*")


async def test_a_site_is_flushed_by_the_flusher_holding_its_lease(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    counted: Counter[str] = Counter()
    await send_hits(api, site, ["a", "b"], counted)
    async with flusher_for(settings) as one, flusher_for(settings) as two:
        # Owners such that the site is `one`'s share with both alive (rendezvous hashing).
        one.owner, two.owner = sorted(
            ("flusher-1", "flusher-2"),
            key=lambda o: assigned_flusher(site, ["flusher-1", "flusher-2"]) != o,
        )
        first = await one.flush_once()
        await send_hits(api, site, ["a"], counted)
        # `two` finds work but the site is `one`'s: it leaves the work (and the snapshot) be.
        second = await two.flush_once()
        pending_after_two = await pending_keys(settings)
        third = await one.flush_once()
    assert (first.hits, second.hits, third.hits) == (2, 0, 1)
    assert pending_after_two != []
    expect(await totals(settings.database_url, site), counted)


async def test_a_dead_flushers_sites_are_taken_over_when_its_lease_runs_out(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    counted: Counter[str] = Counter()
    await send_hits(api, site, ["a", "b", "c"], counted)
    stores = flusher_stores(settings, CrashBeforeDelete)
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    dying = flusher_on(stores, pool, interval_s=0.1, lease_s=3)
    try:
        with pytest.raises(SystemExit):
            await dying.flush_once()  # committed, then died before deleting its snapshot
    finally:
        await pool.close()
        await stores.aclose()
    await send_hits(api, site, ["a"], counted)
    async with flusher_for(settings) as heir:
        attempts = [await heir.flush_once()]
        while not attempts[-1].hits:  # the lease runs out within 3 s; then it is the heir's
            await asyncio.sleep(0.05)
            attempts.append(await heir.flush_once())
            assert len(attempts) < 1000
    assert attempts[0].hits == 0  # not before the lease ran out
    assert attempts[-1].hits == 1  # the new hit; the dead flusher's batch was in the ledger
    expect(await totals(settings.database_url, site), counted)
    assert await leftover_snapshots(settings) == []


async def test_a_site_refilled_meanwhile_drops_only_its_own_batch(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    other = "other"
    put = await api.put(
        f"/v1/sites/{other}", json={}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert put.status_code == 201
    kept: Counter[str] = Counter()
    await send_hits(api, other, ["x", "y"], kept)
    await send_hits(api, site, ["a"], Counter())

    class SiteReloadedMeanwhile(db_ledger.Ledger):
        """`site` (only) was lost and reloaded in Redis while its batch was in hand."""

        async def apply_batch(self, *args: Any, **kwargs: Any) -> Any:
            rows: db_ledger.BatchStream = args[2]
            if site in rows.sites:
                client = aioredis.Redis.from_url(settings.redis_url)
                await client.hset(keys.site_key(site), keys.SITE_GEN, "reloaded")
                await client.aclose()
            return await super().apply_batch(*args, **kwargs)

    stores = flusher_stores(settings)
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    try:
        flusher = flusher_on(stores, pool, SiteReloadedMeanwhile(pool))
        report = await flusher.flush_once()
        await flusher.release_leases()
    finally:
        await pool.close()
        await stores.aclose()
    assert (report.batches, report.hits, report.discarded_hits) == (1, 2, 1)
    expect(await totals(settings.database_url, other), kept)
    assert (await totals(settings.database_url, site)).site_views == 0


async def pending_keys(settings: Settings) -> list[str]:
    return await keys_matching(settings, "{vc:*}:pend:*")


async def test_a_batch_of_many_chunks_lands_exactly_with_its_visitors(
    api: httpx.AsyncClient,
    site: str,
    settings: Settings,
    flusher: Flusher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "FLUSH_CHUNK_ROWS", 3)  # 25 pages: 9 chunks, the last short
    counted: Counter[str] = Counter()
    readers: dict[str, set[str]] = {}
    for i in range(60):
        page, reader = f"p{i % 25}", f"reader-{i % 7}"
        response = await api.post(f"/v1/sites/{site}/hits", json={"page": page, "visitor": reader})
        assert response.status_code == 200, response.text
        if response.json()["counted"]:
            counted[page] += 1
            readers.setdefault(page, set()).add(reader)

    report = await flusher.flush_once()

    assert (report.batches, report.hits, report.rows) == (1, sum(counted.values()), 25)
    expect(await totals(settings.database_url, site), counted)
    conn = await asyncpg.connect(settings.database_url)
    try:
        ledger = await conn.fetchrow("SELECT hits, rows FROM flush_batches")
        page_visitors = dict(
            await conn.fetch("SELECT page, visitors FROM page_views_daily WHERE site = $1", site)
        )
        site_visitors = await conn.fetchval(
            "SELECT sum(visitors) FROM site_views_daily WHERE site = $1", site
        )
    finally:
        await conn.close()
    assert (ledger["hits"], ledger["rows"]) == (sum(counted.values()), 25)
    assert page_visitors == {page: len(who) for page, who in readers.items()}
    assert site_visitors == len(set().union(*readers.values()))
    assert await leftover_snapshots(settings) == []


async def test_postgres_connection_killed_mid_batch_names_the_cause_and_loses_nothing(
    api: httpx.AsyncClient,
    site: str,
    settings: Settings,
    flusher: Flusher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(worker, "FLUSH_CHUNK_ROWS", 3)  # 25 pages: 9 chunks streamed in
    counted: Counter[str] = Counter()
    await send_hits(api, site, [f"p{i % 25}" for i in range(60)], counted)
    killer = await asyncpg.connect(settings.database_url)
    one_at_a_time = asyncio.Lock()  # chunks are read by concurrent tasks; `killer` is one
    kills: list[asyncio.Task[list[int]]] = []  # the test's own: the failing pass cancels chunks
    read_chunk = flusher._with_visitors

    async def end_open_transactions() -> list[int]:
        ended: list[int] | None = await killer.fetchval(
            "SELECT array_agg(pg_terminate_backend(pid)::int) FROM pg_stat_activity"
            " WHERE application_name = 'viewcounter' AND xact_start IS NOT NULL"
            " AND datname = current_database()"
        )
        return ended or []

    async def kill_the_transaction_mid_stream(
        rows: list[tuple[str, str, str]], hits: list[int]
    ) -> list[db_ledger.DailyRow]:
        # Once the batch's transaction is open (its first chunks are in), end its backend as
        # a crashed or restarted server would.
        async with one_at_a_time:
            if not any(k.done() and k.result() for k in kills):
                kills.append(asyncio.create_task(end_open_transactions()))
                await asyncio.shield(kills[-1])
        return await read_chunk(rows, hits)

    monkeypatch.setattr(flusher, "_with_visitors", kill_the_transaction_mid_stream)
    try:
        with caplog.at_level("DEBUG"), pytest.raises(db_errors.DatabaseUnavailable) as raised:
            await flusher.flush_once()
        killed = [pid for ended in await asyncio.gather(*kills) for pid in ended]
    finally:
        await killer.close()
    assert killed == [1], raised.value  # one transaction was open, and it was ended
    # Ended while a COPY ran, the driver names the server's reason; ended while the
    # transaction waited on Redis, the next statement finds the connection gone.
    if isinstance(raised.value, db_errors.ConnectionLost):
        assert str(raised.value).startswith("ConnectionLost: Postgres closed the connection")
    else:
        # (with the server's reason when its FATAL message arrived before the close)
        assert str(raised.value).startswith(
            "ConnectionDoesNotExistError: connection was closed in the middle of operation"
        )
    assert "InterfaceError" not in str(raised.value)
    assert not [r for r in caplog.records if "InterfaceError" in r.getMessage()]
    assert await leftover_snapshots(settings) != []  # the batch stays frozen in Redis

    monkeypatch.setattr(flusher, "_with_visitors", read_chunk)
    report = await flusher.flush_once()  # the next pass applies the batch, exactly once

    assert (report.batches, report.hits, report.rows) == (1, sum(counted.values()), 25)
    expect(await totals(settings.database_url, site), counted)
    assert await leftover_snapshots(settings) == []
