"""The statistics block (GET /v1/sites/{site}/stats, and `stats: true` on a hit): live periods
in the site's local calendar, exact against site_views_daily once flushed, never lower after a
refill, the upgrade fill of units an earlier release loaded, and visitors online."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis.asyncio as aioredis

from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter import keys, startup
from services.counting.live import LiveCounts, View
from services.db import pool as db_pool
from services.db import sites as db_sites
from services.flusher.worker import Flusher
from tests.support.checks import fetch
from tests.support.stack import (
    SITE,
    SITE_TZ,
    FakeClock,
    flusher_on,
    make_settings,
    register_site,
    running_api,
)

ZONE = ZoneInfo(SITE_TZ)
FIELDS = ("timezone", "day", "online", "today", "yesterday", "this_week", "this_month", "total")


@pytest.fixture(params=[1, 4], ids=["one-unit", "split-over-4"])
def units(request: pytest.FixtureRequest) -> int:
    """The site kept in one unit, or split over four."""
    return int(request.param)


@pytest.fixture
def unit_settings(redis_url: str, database_url: str, units: int) -> Settings:
    return make_settings(redis_url, database_url, shards=units)


def local(*when: int) -> float:
    """Seconds since the epoch of a wall-clock time in the site's zone."""
    return datetime(*when, tzinfo=ZONE).timestamp()  # type: ignore[misc]


@asynccontextmanager
async def stack_at(
    settings: Settings, clock: FakeClock
) -> AsyncIterator[tuple[httpx.AsyncClient, Flusher]]:
    """The api and a flusher, both on `clock`."""
    async with running_api(settings, clock=clock) as client:
        stores = Clients(
            counter_client.connect(settings.redis_url, max_connections=4, timeout_s=5),
            units=settings.shards,
        )
        pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
        flusher = flusher_on(stores, pool, clock=clock)
        try:
            await register_site(client)
            yield client, flusher
        finally:
            await flusher.release_leases()
            await pool.close()
            await stores.aclose()


async def stats(client: httpx.AsyncClient, site: str = SITE) -> dict[str, object]:
    response = await client.get(f"/v1/sites/{site}/stats")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert list(body) == ["site", *FIELDS]
    return body


def expected(sent: Counter[str], now: float, online: int, baseline: int = 0) -> dict[str, object]:
    """The block worked out from the views sent per local day (independently of the code)."""
    today = datetime.fromtimestamp(now, ZONE).date()
    monday = today - timedelta(days=today.weekday())
    first = today.replace(day=1)

    def between(start: date) -> int:
        return sum(n for day, n in sent.items() if start <= date.fromisoformat(day) <= today)

    return {
        "site": SITE,
        "timezone": SITE_TZ,
        "day": today.isoformat(),
        "online": online,
        "today": sent[today.isoformat()],
        "yesterday": sent[(today - timedelta(days=1)).isoformat()],
        "this_week": between(monday),
        "this_month": between(first),
        "total": sum(sent.values()) + baseline,
    }


async def send(
    client: httpx.AsyncClient, clock: FakeClock, sent: Counter[str], n: int, page: str = "a"
) -> None:
    for i in range(n):
        response = await client.post(
            f"/v1/sites/{SITE}/hits", json={"page": f"{page}{i % 3}", "visitor": "reader"}
        )
        assert response.status_code == 200 and response.json()["counted"], response.text
        sent[datetime.fromtimestamp(clock.now, ZONE).date().isoformat()] += 1


async def postgres_days(database_url: str) -> Counter[str]:
    rows = await fetch(
        database_url, "SELECT day::text AS day, views FROM site_views_daily WHERE site = $1", SITE
    )
    return Counter({r["day"]: r["views"] for r in rows})


# Thursday 30 April 2026 23:59 in Ho Chi Minh City: the next local midnight is also the 1st
# of May (a Friday); Monday 4 May 00:00 starts a week within the month.
STEPS = [
    ((2026, 4, 30, 23, 59, 0), 3),
    ((2026, 5, 1, 0, 0, 30), 2),
    ((2026, 5, 2, 12, 0, 0), 0),
    ((2026, 5, 3, 23, 59, 30), 4),
    ((2026, 5, 4, 0, 0, 10), 1),
    ((2026, 5, 4, 0, 2, 0), 2),
]


async def test_periods_across_midnight_the_first_and_monday_are_exact_before_and_after_a_flush(
    database_url: str, unit_settings: Settings
) -> None:
    clock = FakeClock(local(*STEPS[0][0]))
    sent: Counter[str] = Counter()
    seen_at: float | None = None  # when the one reader was last on the site
    async with stack_at(unit_settings, clock) as (client, flusher):
        for when, n in STEPS:
            clock.now = local(*when)
            online = int(seen_at is not None and clock.now - seen_at < 300)
            assert await stats(client) == expected(sent, clock.now, online), when
            await send(client, clock, sent, n, page=f"/tin-tuc/{when[2]}-")
            if n:
                seen_at = clock.now
            clock.advance(1)  # a split site's online count is reused for a second
            online = int(seen_at is not None and clock.now - seen_at < 300)
            before = await stats(client)
            assert before == expected(sent, clock.now, online), when
            await flusher.flush_once()
            assert await stats(client) == before, when  # a flush changes nothing shown
        assert await postgres_days(database_url) == sent
    # Every period is the sum of site_views_daily over its days.
    assert before["this_month"] == sum(n for d, n in sent.items() if d.startswith("2026-05"))


async def test_a_hit_that_asks_for_stats_gets_the_block_including_itself(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url)
    clock = FakeClock(local(2026, 5, 4, 9, 0, 0))
    async with stack_at(settings, clock) as (client, _):
        first = await client.post(f"/v1/sites/{SITE}/hits", json={"page": "a", "stats": True})
        plain = await client.post(f"/v1/sites/{SITE}/hits", json={"page": "a", "stats": False})
        refused = await client.post(f"/v1/sites/{SITE}/hits", json={"page": "a", "stats": "yes"})
        pixel = await client.get(f"/v1/sites/{SITE}/hit.gif", params={"page": "a", "stats": "1"})
        read = await stats(client)
    assert first.status_code == 200
    assert first.json() == {
        "site": SITE, "page": "a", "counted": True, "page_views": 1, "site_views": 1,
        "stats": {
            "timezone": SITE_TZ, "day": "2026-05-04", "online": 1, "today": 1, "yesterday": 0,
            "this_week": 1, "this_month": 1, "total": 1,
        },
    }  # fmt: skip
    assert "stats" not in plain.json()
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "stats"
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
    # The refused hit counted nothing; the pixel did.
    assert (read["today"], read["total"]) == (3, 3)


@pytest.mark.parametrize(
    ("site", "status"), [("Not_A_Site!", 400), ("nobody-here", 404), ("a" * 200, 400)]
)
async def test_a_bad_site_is_answered_as_counts_answers_it(
    api: httpx.AsyncClient, site: str, status: int
) -> None:
    got = await api.get(f"/v1/sites/{site}/stats")
    counts = await api.get(f"/v1/sites/{site}/counts")
    assert (got.status_code, got.json()) == (counts.status_code, counts.json())
    assert got.status_code in (status, 422)
    hit = await api.post(f"/v1/sites/{site}/hits", json={"page": "a", "stats": True})
    assert hit.status_code == got.status_code


async def test_after_redis_loses_its_data_no_period_is_lower(
    redis_url: str, unit_settings: Settings
) -> None:
    clock = FakeClock(local(2026, 5, 1, 8, 0, 0))
    sent: Counter[str] = Counter()
    async with stack_at(unit_settings, clock) as (client, flusher):
        for day in (1, 2, 3, 4):  # Friday the 1st .. Monday the 4th
            clock.now = local(2026, 5, day, 8, 0, 0)
            await send(client, clock, sent, 3 + day, page=f"p{day}-")
            await flusher.flush_once()  # everything flushed: nothing of it can be lost
        shown = await stats(client)
        assert shown == expected(sent, clock.now, 1)
        redis = aioredis.Redis.from_url(redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()
        clock.advance(1)  # a split site's online count is reused for a second
        refilled = await stats(client)  # loads the site from Postgres
        await send(client, clock, sent, 2, page="after-")
        clock.advance(1)
        later = await stats(client)
    # The reader's online mark went with Redis: everything else is exactly as before.
    assert refilled == {**shown, "online": 0}
    assert later == expected(sent, clock.now, 1)


async def test_units_loaded_by_the_earlier_release_get_exact_days_from_the_flusher_once(
    redis_url: str, database_url: str, units: int, unit_settings: Settings
) -> None:
    clock = FakeClock(local(2026, 5, 3, 10, 0, 0))
    sent: Counter[str] = Counter()
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with stack_at(unit_settings, clock) as (client, flusher):
            await send(client, clock, sent, 5, page="sun-")
            await flusher.flush_once()
            clock.now = local(2026, 5, 4, 10, 0, 0)
            await send(client, clock, sent, 4, page="mon-")  # pending when the hash goes
            # As a unit the earlier release loaded: no days hash, no marker.
            await redis.delete(*(keys.days_key(keys.unit(SITE, i)) for i in range(units)))
            await send(client, clock, sent, 3, page="new-")  # hits keep flowing meanwhile
            low = await stats(client)
            assert (low["today"], low["this_week"]) == (3, 3)  # only what came since
            await flusher.flush_once()  # the batch commits, then the fill
            await send(client, clock, sent, 2, page="later-")  # pending after the fill
            clock.advance(1)  # a split site's online count is reused for a second
            filled = await stats(client)
            assert filled == expected(sent, clock.now, 1)
            # Once: flushing again (and a fill that would now be wrong) changes nothing.
            await flusher.flush_once()
            assert await stats(client) == filled
        markers = [
            await redis.hget(keys.days_key(keys.unit(SITE, i)), keys.DAYS_FILLED)
            for i in range(units)
        ]
    finally:
        await redis.aclose()
    assert await postgres_days(database_url) == sent
    # Units that had hits are filled; one with none (split site) keeps no hash at all.
    assert all(m in (b"1", None) for m in markers) and b"1" in markers


async def test_the_flusher_drops_days_older_than_kept(redis_url: str, database_url: str) -> None:
    settings = make_settings(redis_url, database_url)
    clock = FakeClock(local(2026, 5, 4, 10, 0, 0))
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with stack_at(settings, clock) as (client, flusher):
            await send(client, clock, Counter(), 1)
            await redis.hset(keys.days_key(SITE), mapping={"2026-03-01": 7, "2026-03-30": 8})
            await flusher.flush_once()
            fields = await redis.hgetall(keys.days_key(SITE))
    finally:
        await redis.aclose()
    # 40 days before 4 May (UTC) is 25 March: the 1st of March goes, the 30th stays.
    assert fields == {"filled": "1", "2026-03-30": "8", "2026-05-04": "1"}


async def online_of(live: LiveCounts) -> int:
    return (await live.stats(SITE)).online


@asynccontextmanager
async def live_counts_at(settings: Settings, clock: FakeClock) -> AsyncIterator[LiveCounts]:
    async with running_api(settings, clock=clock) as client:
        await register_site(client)
    stores = Clients(
        counter_client.connect(settings.redis_url, max_connections=8, timeout_s=30),
        units=settings.shards,
    )
    await startup.register_scripts(stores.redis)
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=10)
    try:
        yield LiveCounts(stores.hits, db_sites.Sites(pool), clock=clock)
    finally:
        await pool.close()
        await stores.aclose()


async def send_visitors(live: LiveCounts, first: int, count: int) -> None:
    for start in range(first, first + count, 1000):
        views = [View(f"p{i % 50}", visitor=f"reader-{i}") for i in range(start, start + 1000)]
        await live.hit_batch(SITE, views, f"batch-{start}")


async def test_ten_thousand_visitors_online_within_five_percent_leave_after_the_window(
    redis_url: str, units: int, unit_settings: Settings
) -> None:
    clock = FakeClock(local(2026, 5, 4, 10, 0, 0))
    async with live_counts_at(unit_settings, clock) as live:
        # A fixed salt makes the tokens, and so the estimate, the same on every run.
        redis = aioredis.Redis.from_url(redis_url)
        await redis.set(keys.salt_key("2026-05-04"), "ab" * 32)
        await redis.aclose()
        await send_visitors(live, 0, 5000)
        clock.advance(120)  # the rest two minutes later
        await send_visitors(live, 5000, 5000)
        online = await online_of(live)
        clock.advance(300 - 120 + 59)  # the first half's minute is still in the window
        still = await online_of(live)
        clock.advance(1)  # W + 60 s after the first half's minute began: it left
        half = await online_of(live)
        clock.advance(120)
        gone = await online_of(live)
    print(f"online estimate of 10000 visitors ({units} units): {online}")
    assert abs(online / 10_000 - 1) <= 0.05
    assert still == online
    assert abs(half / 5000 - 1) <= 0.05
    assert gone == 0


async def test_online_memory_is_bounded_whatever_the_traffic(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url)
    clock = FakeClock(local(2026, 5, 4, 10, 0, 0))
    async with live_counts_at(settings, clock) as live:
        for minute in range(10):  # 100,000 visitors over ten minutes
            await send_visitors(live, minute * 10_000, 10_000)
            clock.advance(60)
        redis = aioredis.Redis.from_url(redis_url)
        try:
            online_keys = [k async for k in redis.scan_iter(match=f"{keys.tag(SITE)}:on:*")]
            ttls = [await redis.ttl(k) for k in online_keys]
            used = sum([await redis.memory_usage(k) or 0 for k in online_keys])
        finally:
            await redis.aclose()
        online = await online_of(live)
    # Every minute's sketch expires (the fake clock does not move Redis' own: all still here).
    assert len(online_keys) == 10 and all(0 < t <= 420 for t in ttls)
    print(f"online sketches of 100000 visitors: {used} bytes in {len(online_keys)} keys")
    # What lives at once: the window's minutes plus two, each at most a dense sketch (12 KB).
    assert used / len(online_keys) * 7 < 100_000
    assert abs(online / 50_000 - 1) <= 0.05  # the last five minutes and the current one


async def test_stats_reads_are_one_round_trip_and_never_touch_postgres(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url)
    clock = FakeClock(local(2026, 5, 4, 10, 0, 0))
    async with live_counts_at(settings, clock) as live:
        await send_visitors(live, 0, 1000)
        await live.stats(SITE)  # the site's settings are cached from here on
        redis = aioredis.Redis.from_url(redis_url)
        try:
            before = await redis.info("commandstats")
            for _ in range(10):
                await live.stats(SITE)
            after = await redis.info("commandstats")
            # Reads taken together leave together (group commit): one call for them all.
            await asyncio.gather(*(live.stats(SITE) for _ in range(10)))
            together = await redis.info("commandstats")
        finally:
            await redis.aclose()
    calls = {
        name: after[name]["calls"] - before.get(name, {"calls": 0})["calls"]
        for name in after
        if after[name]["calls"] != before.get(name, {"calls": 0})["calls"]
    }
    # Ten reads: ten stats.lua calls, nothing else (but what the script runs inside, and
    # this test's own connection).
    assert calls.pop("cmdstat_evalsha") == 10
    assert together["cmdstat_evalsha"]["calls"] - after["cmdstat_evalsha"]["calls"] == 1
    inside = {"hexists", "hget", "hmget", "pfcount"}
    own = {"info", "hello", "client|setinfo", "ping"}
    assert {name.removeprefix("cmdstat_") for name in calls} <= inside | own
