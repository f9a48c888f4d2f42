"""The hit path and live reads against real Redis and Postgres."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Callable

import httpx
import redis.asyncio as aioredis

from services.cli.localredis import RedisProcess
from services.config import Settings
from services.flusher.worker import Flusher
from tests.support.checks import days_around_now, totals, views
from tests.support.stack import ADMIN_TOKEN, SITE_TZ, api_with_site, make_settings, running_api


async def hit(client: httpx.AsyncClient, page: str, site: str = "quan11") -> httpx.Response:
    return await client.post(f"/v1/sites/{site}/hits", json={"page": page})


async def test_each_hit_is_counted_once_and_answers_live_totals(
    api: httpx.AsyncClient, site: str
) -> None:
    answers = [(await hit(api, "a")).json() for _ in range(3)]
    answers.append((await hit(api, "b")).json())
    assert [(a["page_views"], a["site_views"]) for a in answers] == [(1, 1), (2, 2), (3, 3), (1, 4)]
    assert all(a["counted"] is True and a["site"] == site for a in answers)


async def test_sendbeacon_text_plain_body_counts(api: httpx.AsyncClient, site: str) -> None:
    response = await api.post(
        f"/v1/sites/{site}/hits",
        content=b'{"page": "tin-t\xe1\xbb\xa9c/ph\xc3\xa1t-huy-vai-tr\xc3\xb2-123"}',
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 200
    assert response.json()["page"] == "tin-tức/phát-huy-vai-trò-123"
    assert response.json()["page_views"] == 1


async def test_pixel_counts_and_is_never_cached(api: httpx.AsyncClient, site: str) -> None:
    response = await api.get(f"/v1/sites/{site}/hit.gif", params={"page": "a"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    assert response.content.startswith(b"GIF89a")
    assert (await hit(api, "a")).json()["page_views"] == 2


async def test_counts_reads_live_totals_without_counting(api: httpx.AsyncClient, site: str) -> None:
    await hit(api, "a")
    await hit(api, "a")
    await hit(api, "b")
    params = [("page", "a"), ("page", "b"), ("page", "never"), ("page", "a")]
    for _ in range(2):
        body = (await api.get(f"/v1/sites/{site}/counts", params=params)).json()
        assert views(body) == {"site": site, "site_views": 3, "pages": {"a": 2, "b": 1, "never": 0}}
        # One client: one distinct visitor of the site, of "a" and of "b" today.
        assert (body["site_visitors"], body["page_visitors"]) == (1, {"a": 1, "b": 1, "never": 0})
        assert body["day"] in days_around_now(SITE_TZ)


async def test_two_unicode_forms_of_a_slug_are_one_page(api: httpx.AsyncClient, site: str) -> None:
    slug = "tin-tức/phát-huy-vai-trò-123"
    await hit(api, unicodedata.normalize("NFC", slug))
    second = (await hit(api, "  " + unicodedata.normalize("NFD", slug) + " ")).json()
    assert second["page"] == slug
    assert second["page_views"] == 2


async def test_unknown_site_is_404_and_not_counted(api: httpx.AsyncClient, site: str) -> None:
    response = await hit(api, "a", site="nosuchsite")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_site"
    assert (await api.get("/v1/sites/nosuchsite/counts")).status_code == 404


async def test_admin_routes_need_the_token(api: httpx.AsyncClient) -> None:
    missing = await api.put("/v1/sites/x1", json={})
    wrong = await api.put("/v1/sites/x1", json={}, headers={"authorization": "Bearer nope"})
    right = await api.put(
        "/v1/sites/x1", json={}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 201)
    again = await api.put(
        "/v1/sites/x1",
        json={"timezone": "Europe/Berlin"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert again.status_code == 200
    assert again.json() == {
        "site": "x1",
        "timezone": "Europe/Berlin",
        "dedupe_window": None,
        "max_pages": None,
        "registered_pages_only": False,
        "page_patterns": [],
        "allowed_origins": [],
        "public_top": True,
        "learn_titles": False,
        "created": False,
    }


async def test_admin_routes_refuse_all_without_a_configured_token(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, admin_token=None)
    async with running_api(settings) as client:
        response = await client.put(
            "/v1/sites/x1", json={}, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
    assert response.status_code == 403


async def test_day_bucket_is_the_sites_local_date(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    await hit(api, "a")
    await flusher.flush_once()
    import asyncpg

    conn = await asyncpg.connect(settings.database_url)
    try:
        day = await conn.fetchval("SELECT day FROM page_views_daily WHERE site = $1", site)
        local_today = await conn.fetchval("SELECT (now() AT TIME ZONE 'Asia/Ho_Chi_Minh')::date")
    finally:
        await conn.close()
    assert day == local_today


async def test_redis_down_answers_503_and_applies_nothing(
    own_redis: Callable[..., RedisProcess], database_url: str
) -> None:
    server = own_redis(appendfsync="always")
    settings = make_settings(server.url, database_url, redis_timeout=0.5)
    async with api_with_site(settings) as client:
        assert (await hit(client, "a")).json()["page_views"] == 1
        server.stop()
        down = await hit(client, "a")
        assert down.status_code == 503
        assert down.headers["retry-after"] == "1"
        assert down.json()["error"]["code"] == "redis_unavailable"
        reads = await client.get("/v1/sites/quan11/counts", params={"page": "a"})
        assert reads.status_code == 503
        server.restart()
        # Refused at once (never sent) while Redis is known unreachable, until a probe gets
        # through (groupcommit.PROBE_INTERVAL_S).
        answer = await hit(client, "a")
        while answer.status_code == 503:
            await asyncio.sleep(0.05)
            answer = await hit(client, "a")
        body = answer.json()
    assert (body["page_views"], body["site_views"]) == (2, 2)


async def test_counts_never_go_backwards_when_redis_loses_its_data(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    for page in ("a", "a", "b"):
        await hit(api, page)
    await flusher.flush_once()
    before = (await api.get(f"/v1/sites/{site}/counts", params={"page": ["a", "b"]})).json()
    client = aioredis.Redis.from_url(settings.redis_url)
    await client.flushall()  # Redis restarted empty (no AOF), or a fresh replica
    await client.aclose()
    after = (await api.get(f"/v1/sites/{site}/counts", params={"page": ["a", "b"]})).json()
    # (Today's distinct-visitor sketches were lost with Redis: views are what cannot drop.)
    assert (
        views(after) == views(before) == {"site": site, "site_views": 3, "pages": {"a": 2, "b": 1}}
    )
    assert (await hit(api, "a")).json()["page_views"] == 3
    await flusher.flush_once()
    assert (await totals(settings.database_url, site)).pages == {"a": 3, "b": 1}


async def test_head_on_the_pixel_does_not_count(api: httpx.AsyncClient, site: str) -> None:
    head = await api.head(f"/v1/sites/{site}/hit.gif", params={"page": "a"})
    assert head.status_code == 200
    assert head.headers["content-type"] == "image/gif"
    counts = await api.get(f"/v1/sites/{site}/counts", params={"page": "a"})
    assert counts.json()["pages"] == {"a": 0}
