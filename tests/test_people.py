"""Count people, not reloads and bots: dedupe window, bot filter, per-client rate limits."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from services.cli.localredis import RedisProcess
from services.cli.localservers import REDIS_SERVER_ENV
from services.clients import Clients
from services.counter import client as counter_client
from services.counter import keys, startup
from services.counter.outcomes import HitRequest, PageRule
from services.counting.live import LiveCounts
from services.db import pool as db_pool
from services.db import sites as db_sites
from tests.support import stack
from tests.support.checks import views
from tests.support.stack import SITE, api_with_site, make_settings, register_site, running_api

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


async def hit(
    client: httpx.AsyncClient, page: str, *, headers: dict[str, str] | None = None, **body: str
) -> dict[str, object]:
    response = await client.post(
        f"/v1/sites/{SITE}/hits", json={"page": page, **body}, headers=headers or {}
    )
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


async def live(client: httpx.AsyncClient, *pages: str) -> dict[str, object]:
    response = await client.get(f"/v1/sites/{SITE}/counts", params={"page": list(pages)})
    result: dict[str, object] = response.json()
    return result


async def test_a_reload_storm_counts_once_per_window(redis_url: str, database_url: str) -> None:
    settings = make_settings(redis_url, database_url, dedupe_window=1800)
    async with api_with_site(settings) as client:
        answers = [await hit(client, "a") for _ in range(20)]
        other_page = await hit(client, "b")
        other_browser = await hit(client, "a", headers={"user-agent": FIREFOX})
        counts = await live(client, "a", "b")
    assert answers[0] == {
        "site": SITE, "page": "a", "counted": True, "page_views": 1, "site_views": 1,
    }  # fmt: skip
    assert all(
        a == {"site": SITE, "page": "a", "counted": False, "reason": "duplicate",
              "page_views": 1, "site_views": 1}
        for a in answers[1:]
    )  # fmt: skip
    assert other_page["counted"] is True
    assert other_browser["counted"] is True  # same IP, another browser: another visitor
    assert views(counts) == {"site": SITE, "site_views": 3, "pages": {"a": 2, "b": 1}}
    assert (counts["site_visitors"], counts["page_visitors"]) == (2, {"a": 2, "b": 1})


async def test_the_sites_visitor_id_decides_who_is_a_repeat(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, dedupe_window=1800)
    async with api_with_site(settings) as client:
        first = await hit(client, "a", visitor="reader-1")
        again_other_browser = await hit(
            client, "a", visitor="reader-1", headers={"user-agent": FIREFOX}
        )
        second_reader = await hit(client, "a", visitor="reader-2")
    assert (first["counted"], again_other_browser["counted"], second_reader["counted"]) == (
        True, False, True,
    )  # fmt: skip


async def test_dedupe_marks_and_the_salt_expire_and_hold_no_ip(
    any_redis_url: str, database_url: str
) -> None:
    settings = make_settings(any_redis_url, database_url, dedupe_window=600)
    async with api_with_site(settings) as client:
        await hit(client, "a")
    redis = aioredis.Redis.from_url(any_redis_url)
    try:
        marks = [k async for k in redis.scan_iter(match=f"{keys.tag(SITE)}:seen:*")]
        ttls = [await redis.ttl(k) for k in marks]
        fields = [await redis.hgetall(k) for k in marks]
        encodings = [await redis.object("encoding", k) for k in marks]
        salts = [k async for k in redis.scan_iter(match=keys.salt_key("*"))]
        salt_ttl = await redis.ttl(salts[0])
    finally:
        await redis.aclose()
    assert len(marks) == 1 and marks[0].startswith(f"{keys.tag(SITE)}:seen:600:".encode())
    # The hash of the mark's generation lives until the next generation is over.
    assert 600 < ttls[0] <= 2 * 600 + 1
    # One field: an 8-byte fingerprint -> the second of the generation it was counted in.
    ((mark, second),) = fields[0].items()
    assert len(mark) == keys.SEEN_FIELD_BYTES and 0 <= int(second) < 600
    assert b"127.0.0.1" not in marks[0] + mark
    assert encodings == [b"listpack"]
    assert len(salts) == 1 and 0 < salt_ttl <= 2 * 86400  # the salt expires too


# Debian's Redis (7.0 on bookworm): the dedupe marks need nothing newer (no hash-field
# expiry); .ci/run installs it, so under CI its absence fails the test.
DEBIAN_REDIS = "/usr/bin/redis-server"


@pytest.fixture(scope="module")
def debian_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    if not os.access(DEBIAN_REDIS, os.X_OK):
        reason = f"no {DEBIAN_REDIS}: `apt-get install redis-server` (Debian's Redis 7.0)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it", pytrace=False)
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(REDIS_SERVER_ENV, DEBIAN_REDIS)
        server = RedisProcess(tmp_path_factory.mktemp("debian-redis"), appendonly=False)
        server.start()
    yield server
    server.stop()


@pytest.fixture(params=["bundled", "debian"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """An empty keyspace on the bundled Valkey (the session's server), then on Debian's
    Redis 7.0."""
    fixture = "redis_server" if request.param == "bundled" else "debian_redis"
    server: RedisProcess = request.getfixturevalue(fixture)
    client = redis.Redis.from_url(server.url)
    try:
        client.flushall()
        client.script_flush()
    finally:
        client.close()
    return server.url


async def test_the_debian_server_is_redis_not_the_bundled_valkey(
    debian_redis: RedisProcess,
) -> None:
    client = aioredis.Redis.from_url(debian_redis.url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    print(f"Debian's redis-server: Redis {info['redis_version']}")  # 7.0.15 on bookworm
    assert "valkey_version" not in info and "server_name" not in info


@pytest.mark.parametrize("offset", [0, 1, 599, 1799])
async def test_a_repeat_is_a_duplicate_until_exactly_the_window_has_passed(
    any_redis_url: str, database_url: str, offset: int
) -> None:
    """By the api's clock: a repeat W - 1 s after the counted view is a duplicate, one W
    after is counted, wherever the view falls in its generation (keys.seen_generation); on
    the bundled Valkey and on Debian's Redis 7.0."""
    window = 1800
    # A fixed morning (UTC): the day's salt, hence the visitor's token, stays the same.
    clock = stack.FakeClock(datetime(2026, 6, 1, 8, tzinfo=UTC).timestamp() + offset)
    settings = make_settings(any_redis_url, database_url, dedupe_window=window)
    async with running_api(settings, clock=clock) as client:
        await register_site(client)
        seen = [(await hit(client, "a"))["counted"]]
        for step in (window - 1, 1, window - 1, 1):
            clock.advance(step)
            seen.append((await hit(client, "a"))["counted"])
        counts = await live(client, "a")
    assert seen == [True, False, True, False, True]
    assert views(counts)["pages"] == {"a": 3}


def hits_metric(outcome: str) -> float:
    """viewcounter_hits_total for SITE and `outcome` in this process (the api under test)."""
    return (
        REGISTRY.get_sample_value("viewcounter_hits_total", {"site": SITE, "outcome": outcome})
        or 0.0
    )


async def test_known_bots_are_answered_but_not_counted(api: httpx.AsyncClient) -> None:
    await register_site(api)
    bots_before, counted_before = hits_metric("bot"), hits_metric("counted")
    await hit(api, "a")
    for agent in (GOOGLEBOT, HEADLESS, "curl/8.5.0", "python-requests/2.32"):
        answer = await hit(api, "a", headers={"user-agent": agent})
        assert answer == {
            "site": SITE, "page": "a", "counted": False, "reason": "bot",
            "page_views": 1, "site_views": 1,
        }  # fmt: skip
    pixel = await api.get(
        f"/v1/sites/{SITE}/hit.gif", params={"page": "a"}, headers={"user-agent": GOOGLEBOT}
    )
    assert pixel.status_code == 200
    assert views(await live(api, "a")) == {"site": SITE, "site_views": 1, "pages": {"a": 1}}
    # Ops see bots apart from counted views.
    assert (hits_metric("bot") - bots_before, hits_metric("counted") - counted_before) == (5, 1)


async def test_a_client_over_its_rate_is_not_counted_and_others_are(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, rate_limit=5, trusted_proxies="127.0.0.1")
    clock = stack.FakeClock()  # all in one clock minute, then the next
    async with running_api(settings, clock=clock) as client:
        await register_site(client)
        flood = [
            await hit(client, f"p{i}", headers={"x-forwarded-for": "203.0.113.7"}) for i in range(8)
        ]
        other = await hit(client, "p0", headers={"x-forwarded-for": "198.51.100.2"})
        counts = await live(client)
        clock.advance(60)
        next_minute = await hit(client, "p9", headers={"x-forwarded-for": "203.0.113.7"})
    assert [a["counted"] for a in flood] == [True] * 5 + [False] * 3
    assert {a.get("reason") for a in flood[5:]} == {"rate_limited"}
    assert other["counted"] is True
    assert counts["site_views"] == 6
    assert next_minute["counted"] is True


async def test_forwarded_for_from_an_untrusted_peer_changes_nothing(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, rate_limit=3)  # no trusted proxies
    async with running_api(settings, clock=stack.FakeClock()) as client:
        await register_site(client)
        answers = [
            await hit(client, f"p{i}", headers={"x-forwarded-for": f"192.0.2.{i}"})
            for i in range(5)
        ]
    # Every request is the socket's client, whatever it claims to forward for.
    assert [a["counted"] for a in answers] == [True, True, True, False, False]


async def test_new_pages_beyond_the_sites_bound_are_not_counted(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, max_pages_per_site=3)
    async with api_with_site(settings) as client:
        answers = [await hit(client, f"p{i}") for i in range(5)]
        known_again = await hit(client, "p0")
        counts = await live(client, "p0", "p1", "p2", "p3", "p4")
    assert [a["counted"] for a in answers] == [True, True, True, False, False]
    assert {a.get("reason") for a in answers[3:]} == {"page_limit"}
    assert known_again["counted"] is True
    assert counts["pages"] == {"p0": 2, "p1": 1, "p2": 1, "p3": 0, "p4": 0}


@pytest.mark.timeout(90)  # ~19 s: a flood of distinct pages
async def test_a_flood_of_random_page_ids_leaves_redis_bounded(
    redis_url: str, database_url: str
) -> None:
    """A million random page ids through the counter core: only the site's bound of pages
    (and their sketches) ever reaches Redis; memory grows by kilobytes, not by the flood."""
    bound = 1000
    flood_size = 1_000_000
    settings = make_settings(redis_url, database_url, max_pages_per_site=bound)
    async with running_api(settings) as client:
        await register_site(client)
    stores = Clients(counter_client.connect(redis_url, max_connections=8, timeout_s=30))
    outcomes: dict[str, int] = {}
    try:
        used_before = (await startup.memory(stores.redis)).used_bytes
        # 1,000 at a time: a batcher refuses past groupcommit's queue bound (1,024 hits).
        for start in range(0, flood_size, 1000):
            chunk = [
                HitRequest(
                    SITE,
                    f"junk-{i:07d}",
                    "2026-01-01",
                    "-",
                    0,
                    "-",
                    0,
                    0,
                    PageRule.at_most(bound),
                    f"v{i}",
                )
                for i in range(start, start + 1000)
            ]
            for result in await asyncio.gather(*(stores.hits.hit(r) for r in chunk)):
                assert result is not None
                outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        used_after = (await startup.memory(stores.redis)).used_bytes
        pages = int(await stores.redis.hget(keys.site_key(SITE), keys.SITE_PAGES) or 0)
        fields = [
            await stores.redis.hlen(key)
            async for key in stores.redis.scan_iter(match=f"{keys.tag(SITE)}:pages:*")
        ]
        pending = sum(
            [await stores.redis.hlen(keys.pending_key(SITE, s)) for s in range(keys.PENDING_SHARDS)]
        )
        key_count = await stores.redis.dbsize()
    finally:
        await stores.aclose()
    assert outcomes == {"counted": bound, "page_limit": flood_size - bound}
    assert (pages, sum(fields), pending) == (bound, bound, bound)
    # site, page buckets, pending shards, the salt, the site's sketch, a sketch per page
    assert key_count <= 20 + len(fields) + bound
    growth = used_after - used_before
    print(f"redis memory after {flood_size} random page ids, bound {bound}: +{growth} bytes")
    assert growth < bound * 512 + 1_000_000


async def test_ten_thousand_visitors_are_counted_within_two_percent(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url)
    async with running_api(settings) as client:
        await register_site(client)
    stores = Clients(counter_client.connect(redis_url, max_connections=8, timeout_s=10))
    pool = await db_pool.connect_pool(database_url, statement_timeout_s=10)
    try:
        live_counts = LiveCounts(stores.hits, db_sites.Sites(pool))
        # A fixed salt makes the visitor tokens, and so the estimate, the same on every run.
        now = datetime.now(UTC)
        for day in (now, now + timedelta(days=1)):  # the run may cross midnight UTC
            await stores.redis.set(keys.salt_key(day.date().isoformat()), "ab" * 32)
        people = 10_000
        for start in range(0, people, 1000):
            await asyncio.gather(
                *(
                    live_counts.hit(SITE, f"p{i % 10}", visitor=f"reader-{i}", ip="", user_agent="")
                    for i in range(start, start + 1000)
                )
            )
        counts = await live_counts.counts(SITE, [f"p{n}" for n in range(10)])
        await stack.flusher_on(stores, pool).flush_once()
        stored = await pool.fetchval(
            "SELECT sum(visitors) FROM site_views_daily WHERE site = $1", SITE
        )
    finally:
        await pool.close()
        await stores.aclose()
    error = counts.site_visitors / people - 1
    print(f"HyperLogLog estimate of {people} visitors: {counts.site_visitors} ({error:+.2%})")
    assert abs(error) <= 0.02
    assert counts.site_views == people
    assert counts.page_visitors is not None
    assert all(abs(v / 1000 - 1) <= 0.02 for v in counts.page_visitors.values())
    assert stored == counts.site_visitors
