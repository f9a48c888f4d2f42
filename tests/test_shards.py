"""A site split over several units (VIEWCOUNTER_SHARDS): hits, reads, loads, baselines, batches
and flushes stay exact, and flushers share the units. On one Redis here; test_cluster.py runs
the Cluster default (16 units over 3 nodes)."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter import keys, startup
from services.counter.calls import unit_of
from services.counter.errors import LayoutMismatch
from services.flusher.passes import assigned_flusher
from tests.support.checks import assert_consistent, fetchval, totals
from tests.support.stack import (
    ADMIN,
    SITE,
    api_with_site,
    flusher_for,
    make_settings,
    register_site,
    running_api,
)

UNITS = 4
PAGES = [f"/tin-tuc/{n}" for n in range(24)]
INGEST_TOKEN = "ingest-token-0123456789abcdef"


def unit(page: str) -> str:
    return unit_of(SITE, page, UNITS)


def sharded(redis_url: str, database_url: str, **overrides: object) -> Settings:
    return make_settings(
        redis_url, database_url, shards=UNITS, ingest_token=INGEST_TOKEN, **overrides
    )


async def counts(client: httpx.AsyncClient, pages: list[str]) -> dict[str, object]:
    response = await client.get(f"/v1/sites/{SITE}/counts", params={"page": pages})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def hit(client: httpx.AsyncClient, page: str, visitor: str) -> dict[str, object]:
    response = await client.post(f"/v1/sites/{SITE}/hits", json={"page": page, "visitor": visitor})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def drop_unit(redis_url: str, lost: str) -> int:
    """Delete every key of one unit, as a Cluster node that lost its data would."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        found = [k async for k in client.scan_iter(match=f"{keys.tag(lost)}:*")]
        if found:
            await client.delete(*found)
        return len(found)
    finally:
        await client.aclose()


async def test_hits_reads_and_flushes_of_a_split_site_are_exact(
    redis_url: str, database_url: str
) -> None:
    settings = sharded(redis_url, database_url, dedupe_window=1800)
    sent: Counter[str] = Counter()
    shown: list[int] = []
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register_site(client)
        for reader in range(6):
            for page in PAGES[reader : reader + 10]:
                for _ in range(2):  # the repeat is a duplicate
                    body = await hit(client, page, f"reader-{reader}")
                    shown.append(int(body["site_views"]))  # type: ignore[call-overload]
                    sent[page] += 1 if body["counted"] else 0
        live = await counts(client, PAGES)
        report = await flusher.flush_once()
        after_flush = await counts(client, PAGES)
    assert sum(sent.values()) == 60
    assert shown == sorted(shown) and shown[-1] == 60  # the footer never goes back
    assert live["site_views"] == after_flush["site_views"] == 60
    assert live["pages"] == after_flush["pages"] == {p: sent[p] for p in PAGES}
    # Six readers over all units: the union of the units' sketches, not their sum.
    assert live["site_visitors"] == 6
    # Every unit with hits, all in one batch (one Redis: one node, UNITS_PER_BATCH a batch).
    assert (report.units, report.batches) == (len({unit(p) for p in sent}), 1)
    stored = await totals(database_url, SITE)
    assert_consistent(stored)
    assert stored.site_views == 60
    assert stored.pages == dict(sent)
    visitors = await fetchval(
        database_url, "SELECT sum(visitors) FROM site_views_daily WHERE site = $1", SITE
    )
    assert visitors == 6


async def test_a_lost_unit_is_refilled_from_postgres_alone(
    redis_url: str, database_url: str
) -> None:
    settings = sharded(redis_url, database_url)
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register_site(client)
        response = await client.put(
            f"/v1/sites/{SITE}/baseline", json={"baseline": 1000}, headers=ADMIN
        )
        assert response.status_code == 200, response.text
        for n, page in enumerate(PAGES):
            for _ in range(n % 3 + 1):
                await hit(client, page, "r")
        await flusher.flush_once()
        before = await counts(client, PAGES)
        # Unit 0 holds the site baseline's share, unit 2 only pages: lose each in turn.
        for lost in (keys.unit(SITE, 2), SITE):
            assert await drop_unit(redis_url, lost) > 0
            again = await counts(client, PAGES)
            assert again["pages"] == before["pages"]
            assert again["site_views"] == before["site_views"] == 1000 + 48
        # And counting goes on in the refilled units, exactly.
        for page in PAGES:
            await hit(client, page, "r")
        await flusher.flush_once()
        final = await counts(client, PAGES)
    stored = await totals(database_url, SITE)
    assert_consistent(stored)
    assert stored.site_views == 48 + 24
    assert final["site_views"] == 1000 + 48 + 24


async def test_baselines_reach_each_unit_once(redis_url: str, database_url: str) -> None:
    settings = sharded(redis_url, database_url)
    legacy = {page: 100 * (n + 1) for n, page in enumerate(PAGES[:8])}
    csv = "page,views\n" + "".join(f"{p},{v}\n" for p, v in legacy.items())
    async with api_with_site(settings) as client:
        for page in PAGES[:8]:
            await hit(client, page, "r")

        async def import_csv() -> None:
            response = await client.post(
                f"/v1/sites/{SITE}/import",
                content=csv.encode(),
                params={"site_total": 50_000},
                headers={**ADMIN, "content-type": "text/csv"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["live_pending"] == 0

        await import_csv()
        first = await counts(client, PAGES[:8])
        await import_csv()  # the same import again changes nothing
        second = await counts(client, PAGES[:8])
        for lost in keys.units(SITE, UNITS):  # a reload from Postgres shows the same
            await drop_unit(redis_url, lost)
        reloaded = await counts(client, PAGES[:8])
    assert first["pages"] == second["pages"] == {p: v + 1 for p, v in legacy.items()}
    assert first["site_views"] == second["site_views"] == 50_000 + 8
    # The unflushed hits were lost with the units: the reload has the baselines alone.
    assert reloaded["pages"] == legacy
    assert reloaded["site_views"] == 50_000


async def test_a_retried_batch_over_several_units_counts_once(
    redis_url: str, database_url: str
) -> None:
    settings = sharded(redis_url, database_url)
    batch = {"hits": [{"page": p, "visitor": f"v{i}"} for i, p in enumerate(PAGES * 20)]}
    headers = {"authorization": f"Bearer {INGEST_TOKEN}", "idempotency-key": "c-1/b-1"}
    url = f"/v1/sites/{SITE}/hits/batch"
    async with api_with_site(settings) as client:
        first = await client.post(url, json=batch, headers=headers)
        again = await client.post(url, json=batch, headers=headers)
        live = await counts(client, PAGES)
    assert first.status_code == again.status_code == 200
    assert first.json()["outcomes"] == again.json()["outcomes"]
    assert again.json()["replayed"] is True
    assert live["site_views"] == 480
    assert live["pages"] == dict.fromkeys(PAGES, 20)


async def test_a_batch_without_a_key_that_meets_an_unloaded_unit_counts_each_view_once(
    redis_url: str, database_url: str
) -> None:
    """Our own retry: the calls of the loaded units ran, one unit was not loaded; after the
    load every call is sent again and those that ran answer their record, counting nothing.
    The records are deleted once the batch is answered."""
    settings = sharded(redis_url, database_url)
    batch = {"hits": [{"page": p, "visitor": f"v{i}"} for i, p in enumerate(PAGES * 20)]}
    headers = {"authorization": f"Bearer {INGEST_TOKEN}"}
    async with api_with_site(settings) as client:
        lost = unit(PAGES[1])
        assert lost != SITE and await drop_unit(redis_url, lost) > 0
        response = await client.post(f"/v1/sites/{SITE}/hits/batch", json=batch, headers=headers)
        live = await counts(client, PAGES)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        records = [k async for k in redis.scan_iter(match=keys.idempotency_key("*", "*"))]
    finally:
        await redis.aclose()
    assert response.status_code == 200, response.text
    assert response.json()["outcomes"]["counted"] == 480
    assert live["site_views"] == 480
    assert live["pages"] == dict.fromkeys(PAGES, 20)
    assert records == []


async def test_a_page_bound_is_shared_out_among_the_units(
    redis_url: str, database_url: str
) -> None:
    settings = sharded(redis_url, database_url, max_pages_per_site=8)
    async with api_with_site(settings) as client:
        outcomes = {page: (await hit(client, page, "r"))["counted"] for page in PAGES}
    counted = [p for p, ok in outcomes.items() if ok]
    per_unit = Counter(unit(p) for p in counted)
    assert max(per_unit.values()) == 2  # 8 pages / 4 units
    assert len(counted) <= 8


async def test_flushers_alive_share_the_units(redis_url: str, database_url: str) -> None:
    settings = sharded(redis_url, database_url)
    units = keys.units(SITE, UNITS)
    async with (
        running_api(settings) as client,
        flusher_for(settings) as first,
        flusher_for(settings) as second,
    ):
        first.owner, second.owner = "flusher-1", "flusher-2"  # a fixed, known split
        share = {
            owner: {u for u in units if assigned_flusher(u, ["flusher-1", "flusher-2"]) == owner}
            for owner in ("flusher-1", "flusher-2")
        }
        await register_site(client)

        async def hits_everywhere() -> None:
            for page in PAGES:
                await hit(client, page, "r")

        await hits_everywhere()
        alone = await first.flush_once()  # the only flusher alive: every unit
        await hits_everywhere()
        joined = await second.flush_once()  # the first still holds every lease
        shrunk = await first.flush_once()  # two alive: gives back the second's share
        took = await second.flush_once()  # takes it
        await hits_everywhere()
        even = [await first.flush_once(), await second.flush_once()]
    assert all(share.values())  # both have a share, and together every unit
    assert alone.units == UNITS
    assert joined.units == 0
    assert shrunk.units == len(share["flusher-1"])
    assert took.units == len(share["flusher-2"])
    assert [r.units for r in even] == [len(share["flusher-1"]), len(share["flusher-2"])]
    stored = await totals(database_url, SITE)
    assert_consistent(stored)
    assert stored.site_views == 3 * len(PAGES)


async def test_another_number_of_units_is_refused(redis_url: str) -> None:
    stores = [
        Clients(counter_client.connect(redis_url, max_connections=2, timeout_s=5), units=n)
        for n in (UNITS, UNITS, 2)
    ]
    try:
        await startup.check_layout(stores[0].redis, UNITS)
        await startup.check_layout(stores[1].redis, UNITS)
        with pytest.raises(LayoutMismatch, match="split over 4 units"):
            await startup.check_layout(stores[2].redis, 2)
    finally:
        for store in stores:
            await store.aclose()


async def test_page_totals_of_an_older_release_move_into_page_buckets(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url)
    async with api_with_site(settings) as client:
        await hit(client, "/b", "r")  # makes the site loaded (and writes one bucket)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        # As an older release left it: one hash of page ids, no page buckets, no layout key.
        for key in [k async for k in raw.scan_iter(match=f"{keys.tag(SITE)}:pages:*")]:
            await raw.delete(key)
        await raw.hdel(keys.site_key(SITE), keys.SITE_PAGES)
        await raw.delete(keys.LAYOUT_KEY)
        await raw.hset(keys.legacy_pages_key(SITE), mapping={"/a": 2, "/b": 1, "/c": 5})
        # A hit the new release counted before the move.
        await raw.hset(*keys.page_entry(SITE, "/a"), 1)
        await raw.hset(keys.site_key(SITE), keys.SITE_PAGES, 1)
        stores = [
            Clients(counter_client.connect(redis_url, max_connections=2, timeout_s=5))
            for _ in range(2)
        ]
        try:
            # Two at once.
            await asyncio.gather(*(startup.check_layout(store.redis, 1) for store in stores))
            counts = await stores[0].hits.counts(SITE, "2026-01-01", ["/a", "/b", "/c"])
        finally:
            for store in stores:
                await store.aclose()
        left = await raw.exists(keys.legacy_pages_key(SITE))
        npages = await raw.hget(keys.site_key(SITE), keys.SITE_PAGES)
    finally:
        await raw.aclose()
    assert counts is not None
    assert counts.pages == {"/a": 3, "/b": 1, "/c": 5}
    assert (left, npages) == (0, b"3")


@pytest.mark.parametrize("shards", [1, UNITS])
async def test_a_site_of_many_pages_is_refilled_whole(
    redis_url: str, database_url: str, shards: int
) -> None:
    """More pages than one load chunk (10,000), after Redis lost everything."""
    settings = make_settings(redis_url, database_url, shards=shards)
    many = [(SITE, f"/bai-viet/{n}", n % 7 + 1) for n in range(25_000)]
    async with api_with_site(settings) as client:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.copy_records_to_table(
                "page_views", records=many, columns=["site", "page", "views"]
            )
            await conn.execute(
                "UPDATE site_views SET views = $2 WHERE site = $1", SITE, sum(v for *_, v in many)
            )
        finally:
            await conn.close()
        for lost in keys.units(SITE, shards):
            await drop_unit(redis_url, lost)
        sample = [page for _, page, _ in many[::997]]
        body = await counts(client, sample)
    assert body["pages"] == {page: views for _, page, views in many[::997]}
    assert body["site_views"] == sum(v for *_, v in many)
