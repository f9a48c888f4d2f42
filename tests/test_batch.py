"""Bulk ingestion: many views per request, counted like single hits, once per Idempotency-Key."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis

from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter import keys
from services.counter.outcomes import Outcome
from services.counting.live import LiveCounts, View
from services.db import pool as db_pool
from services.db import sites as db_sites
from tests.support import stack
from tests.support.checks import assert_consistent, totals

INGEST_TOKEN = "ingest-token-0123456789abcdef"
INGEST = {"authorization": f"Bearer {INGEST_TOKEN}"}
URL = f"/v1/sites/{stack.SITE}/hits/batch"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def views(n: int, pages: int = 10) -> list[dict[str, str]]:
    return [
        {"page": f"/p{i % pages}", "ip": f"203.0.113.{i % 250}", "user_agent": FIREFOX}
        for i in range(n)
    ]


def ingest_settings(redis_url: str, database_url: str, **overrides: object) -> Settings:
    return stack.make_settings(redis_url, database_url, ingest_token=INGEST_TOKEN, **overrides)


async def counts(client: httpx.AsyncClient) -> int:
    return int((await client.get(f"/v1/sites/{stack.SITE}/counts")).json()["site_views"])


async def test_a_batch_counts_like_single_hits_and_lands_in_postgres(
    redis_url: str, database_url: str
) -> None:
    settings = ingest_settings(redis_url, database_url, dedupe_window=1800)
    batch = [
        *views(200),  # 250 addresses, 10 pages: 200 distinct visitor+page pairs
        {"page": "/p0", "ip": "203.0.113.0", "user_agent": FIREFOX},  # a repeat of view 0
        {"page": "/p1", "user_agent": BOT},
        {"page": "/p2", "visitor": "reader-7"},
    ]
    async with stack.api_with_site(settings) as client:
        response = await client.post(URL, json={"hits": batch}, headers=INGEST)
        live = await counts(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["hits"] == 203
    assert body["replayed"] is False
    assert {k: v for k, v in body["outcomes"].items() if v} == {
        "counted": 201,
        "duplicate": 1,
        "bot": 1,
    }
    assert live == 201
    stores = Clients(counter_client.connect(redis_url, max_connections=4, timeout_s=5))
    pool = await db_pool.connect_pool(database_url, statement_timeout_s=5)
    try:
        await stack.flusher_on(stores, pool).flush_once()
    finally:
        await pool.close()
        await stores.aclose()
    stored = await totals(database_url, stack.SITE)
    assert_consistent(stored)
    assert stored.site_views == 201


async def test_a_retried_batch_is_counted_once(redis_url: str, database_url: str) -> None:
    settings = ingest_settings(redis_url, database_url)
    batch = {"hits": views(700)}  # three script calls of at most 256 views
    headers = {**INGEST, "idempotency-key": "collector-42/batch-0001"}
    async with stack.api_with_site(settings) as client:
        first = await client.post(URL, json=batch, headers=headers)
        again = await client.post(URL, json=batch, headers=headers)
        other_body = await client.post(URL, json={"hits": views(5)}, headers=headers)
        other_key = await client.post(
            URL, json=batch, headers={**INGEST, "idempotency-key": "collector-42/batch-0002"}
        )
        total = await counts(client)
    assert (first.status_code, again.status_code, other_key.status_code) == (200, 200, 200)
    assert first.json()["outcomes"] == again.json()["outcomes"]
    assert (first.json()["replayed"], again.json()["replayed"]) == (False, True)
    assert other_body.status_code == 422
    assert other_body.json()["error"] == {
        "code": "idempotency_key_reused",
        "message": "this Idempotency-Key was used for another batch in the last 24 hours",
        "field": "idempotency-key",
    }
    assert total == 1400  # the first batch once, the one under another key once


async def test_a_batch_cut_short_and_sent_again_counts_each_view_once(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    stores = Clients(counter_client.connect(settings.redis_url, max_connections=4, timeout_s=5))
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    try:
        live = LiveCounts(stores.hits, db_sites.Sites(pool))
        batch = [View(page=f"/p{i % 7}", ip=f"198.51.100.{i % 200}") for i in range(600)]
        # The first call (256 views) ran, then the api died; the collector sends it all again.
        cut_short = await live.hit_batch(site, batch[:256], "retry-token")
        retried = await live.hit_batch(site, batch, "retry-token")
    finally:
        await pool.close()
        await stores.aclose()
    assert cut_short == {Outcome.COUNTED: 256}
    # The first call answers its recorded tally; the two others count.
    assert retried == {Outcome.COUNTED: 600}
    assert await counts(api) == 600


async def test_bad_batches_are_refused_whole_and_name_the_field(
    redis_url: str, database_url: str
) -> None:
    settings = ingest_settings(redis_url, database_url)
    cases: list[tuple[object, int, str, str]] = [
        ({"hits": []}, 422, "invalid_field", "hits"),
        ({"hits": "x"}, 422, "invalid_field", "hits"),
        ({"hits": views(10_001)}, 422, "invalid_field", "hits"),
        ({"hits": [*views(3), {"page": ""}]}, 422, "invalid_field", "hits[3].page"),
        ({"hits": [*views(2), {"ip": "1.2.3.4"}]}, 422, "missing_field", "hits[2].page"),
        ({"hits": [{"page": "/a", "ip": "not-an-ip"}]}, 422, "invalid_field", "hits[0].ip"),
        ({"hits": [{"page": "/a", "colour": "red"}]}, 422, "unknown_field", "hits[0].colour"),
        ({"hits": [{"page": "/a", "user_agent": 7}]}, 422, "invalid_field", "hits[0].user_agent"),
        ({"hits": ["/a"]}, 422, "invalid_field", "hits[0]"),
        ([], 422, "invalid_field", "body"),
    ]
    async with stack.api_with_site(settings) as client:
        for body, status, code, field in cases:
            response = await client.post(URL, json=body, headers=INGEST)
            assert response.status_code == status, (field, response.text)
            assert response.json()["error"]["code"] == code, field
            assert response.json()["error"]["field"] == field
        bad_key = await client.post(
            URL, json={"hits": views(1)}, headers={**INGEST, "idempotency-key": "a b"}
        )
        assert bad_key.json()["error"]["field"] == "idempotency-key"
        huge = await client.post(
            URL, content=b'{"hits": [' + b"0," * 5_000_000 + b"0]}", headers=INGEST
        )
        assert huge.status_code == 413
        assert await counts(client) == 0  # nothing half-applied


async def test_the_batch_route_needs_the_ingest_or_admin_token_and_is_rate_limited(
    redis_url: str, database_url: str
) -> None:
    body = {"hits": views(3)}
    async with stack.running_api(ingest_settings(redis_url, database_url)) as client:
        await stack.register_site(client)
        none = await client.post(URL, json=body)
        wrong = await client.post(URL, json=body, headers={"authorization": "Bearer nope"})
        ingest = await client.post(URL, json=body, headers=INGEST)
        admin = await client.post(URL, json=body, headers=stack.ADMIN)
        unknown_site = await client.post("/v1/sites/nosuch/hits/batch", json=body, headers=INGEST)
    assert [r.status_code for r in (none, wrong, ingest, admin)] == [401, 401, 200, 200]
    assert unknown_site.status_code == 404
    limited = ingest_settings(redis_url, database_url, admin_rate_limit=2)
    # The limit counts per clock minute: the test's clock decides which one.
    clock = stack.FakeClock()
    async with stack.running_api(limited, clock=clock) as client:
        answers = [
            (await client.post(URL, json=body, headers=INGEST)).status_code for _ in range(3)
        ]
        clock.advance(60)
        next_minute = (await client.post(URL, json=body, headers=INGEST)).status_code
    assert answers == [200, 200, 429]
    assert next_minute == 200
    no_tokens = stack.make_settings(redis_url, database_url, admin_token=None)
    async with stack.running_api(no_tokens) as client:
        disabled = await client.post(URL, json=body, headers=INGEST)
    assert disabled.status_code == 403


async def idempotency_records(redis_url: str) -> dict[bytes, tuple[int, int]]:
    """Every idempotency record in Redis: key -> (MEMORY USAGE bytes, TTL s)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        found = [k async for k in redis.scan_iter(match=keys.idempotency_key("*", "*"))]
        return {
            k: (int(await redis.memory_usage(k, samples=0) or 0), await redis.ttl(k))
            for k in found
        }
    finally:
        await redis.aclose()


async def test_a_batch_keeps_a_retry_record_of_a_few_bytes_only_when_sent_with_a_key(
    redis_url: str, database_url: str
) -> None:
    settings = ingest_settings(redis_url, database_url, idempotency_ttl=7200)
    many = [{"page": f"/p{i % 300}", "visitor": f"r{i}"} for i in range(10_000)]
    async with stack.api_with_site(settings) as client:
        without = await client.post(URL, json={"hits": many}, headers=INGEST)
        after_without = await idempotency_records(redis_url)
        keyed = {**INGEST, "idempotency-key": "collector-1/0001"}
        with_key = await client.post(URL, json={"hits": many}, headers=keyed)
        after_with = await idempotency_records(redis_url)
        again = await client.post(URL, json={"hits": many}, headers=keyed)
        total = await counts(client)
    assert [r.status_code for r in (without, with_key, again)] == [200, 200, 200]
    assert after_without == {}  # our own retry's records are gone once the batch is answered
    # One record per call of 256 views and one of the body's hash, all for the set time.
    assert len(after_with) == -(-10_000 // 256) + 1
    assert {ttl for _, ttl in after_with.values()} <= set(range(7200 - 60, 7201))
    kept = sum(size for size, _ in after_with.values())
    print(f"idempotency records of a 10,000-view batch: {kept} B, {kept / 10_000:.2f} B a view")
    assert kept <= 10_000  # at most 1 B per view
    assert again.json() == {**with_key.json(), "replayed": True}
    assert with_key.json()["outcomes"]["counted"] == 10_000
    assert total == 20_000  # the batch without a key and the keyed one, once


async def test_the_reused_key_message_names_the_configured_time(
    redis_url: str, database_url: str
) -> None:
    settings = ingest_settings(redis_url, database_url, idempotency_ttl=5400)
    headers = {**INGEST, "idempotency-key": "k-1"}
    async with stack.api_with_site(settings) as client:
        await client.post(URL, json={"hits": views(2)}, headers=headers)
        other = await client.post(URL, json={"hits": views(3)}, headers=headers)
    assert other.json()["error"]["message"] == (
        "this Idempotency-Key was used for another batch in the last 90 minutes"
    )
