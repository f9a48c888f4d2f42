"""Per-site settings through the admin API: dedupe window, page bound and rules, origins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from services.config import Settings
from services.counter import keys
from services.flusher.worker import Flusher
from tests.support.checks import views
from tests.support.stack import ADMIN, SITE, FakeClock, api_with_site, make_settings, running_api

PORTAL = "https://quan11.hochiminhcity.gov.vn"


async def put_site(
    client: httpx.AsyncClient, status: int = 200, **body: object
) -> dict[str, object]:
    response = await client.put(f"/v1/sites/{SITE}", json=body, headers=ADMIN)
    assert response.status_code == status, response.text
    result: dict[str, object] = response.json()
    return result


async def hit(
    client: httpx.AsyncClient, page: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(f"/v1/sites/{SITE}/hits", json={"page": page}, headers=headers)


async def counted(client: httpx.AsyncClient, page: str) -> tuple[bool, str | None]:
    response = await hit(client, page)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["counted"], body.get("reason")


async def live_views(client: httpx.AsyncClient, *pages: str) -> dict[str, object]:
    response = await client.get(f"/v1/sites/{SITE}/counts", params={"page": list(pages)})
    assert response.status_code == 200, response.text
    return views(response.json())


async def test_put_changes_only_the_settings_it_names(api: httpx.AsyncClient, site: str) -> None:
    first = await put_site(api, dedupe_window=60, allowed_origins=[PORTAL + ":443/"])
    second = await put_site(api, max_pages=10)
    read = await api.get(f"/v1/sites/{SITE}", headers=ADMIN)
    reset = await put_site(api, dedupe_window=None)
    assert first["allowed_origins"] == [PORTAL]  # normalised as browsers send it
    assert second == {
        "site": SITE,
        "timezone": "Asia/Ho_Chi_Minh",
        "dedupe_window": 60,
        "max_pages": 10,
        "registered_pages_only": False,
        "page_patterns": [],
        "allowed_origins": [PORTAL],
        "public_top": True,
        "learn_titles": False,
        "created": False,
    }
    assert read.json() == {k: v for k, v in second.items() if k != "created"}
    assert reset["dedupe_window"] is None  # back to the service default


async def test_bad_settings_are_refused_by_field_and_change_nothing(
    api: httpx.AsyncClient, site: str
) -> None:
    before = await put_site(api)
    cases = {
        "dedupe_window": [-1, "60", True, 10**9],
        "max_pages": [-5, 1.5, "x"],
        "registered_pages_only": ["yes", 1, None],
        "public_top": ["yes", 0, None],
        "learn_titles": ["true", 1, None],
        "page_patterns": ["/a/*", None, [1], [""], ["x" * 600], ["a\nb"], ["/p"] * 101],
        "allowed_origins": [
            "https://a.example",
            None,
            ["example.com"],
            ["ftp://example.com"],
            ["https://example.com/path"],
            ["https://user@example.com"],
            ["https://example.com:99999"],
            [7],
        ],
        "colour": ["red"],
    }
    for field, values in cases.items():
        for value in values:
            response = await api.put(f"/v1/sites/{SITE}", json={field: value}, headers=ADMIN)
            assert response.status_code == 422, (field, value, response.text)
            assert response.json()["error"]["field"] == field, (field, value)
    after = await put_site(api)
    assert after == before


async def test_a_sites_own_dedupe_window_overrides_the_default(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, dedupe_window=1800)
    async with api_with_site(settings) as client:
        default = [await counted(client, "a") for _ in range(3)]
        await put_site(client, dedupe_window=0)
        off = [await counted(client, "a") for _ in range(3)]
    assert default == [(True, None), (False, "duplicate"), (False, "duplicate")]
    assert off == [(True, None)] * 3


async def test_a_sites_own_page_bound_overrides_the_default(
    api: httpx.AsyncClient, site: str
) -> None:
    await put_site(api, max_pages=2)
    answers = [await counted(api, p) for p in ("a", "b", "c", "a")]
    assert answers == [(True, None), (True, None), (False, "page_limit"), (True, None)]


async def test_patterns_and_registered_pages_decide_what_counts(
    api: httpx.AsyncClient, site: str, settings: Settings, flusher: Flusher
) -> None:
    await counted(api, "/old-article")  # counted before any rule: a known page from now on
    await flusher.flush_once()
    await put_site(api, page_patterns=["/tin-tuc/*", "/su-kien/*.html"])
    by_pattern = [
        await counted(api, p)
        for p in ("/tin-tuc/a/b", "/su-kien/x.html", "/su-kien/x.htm", "/random", "/old-article")
    ]
    assert by_pattern == [(True, None), (True, None)] + [(False, "unknown_page")] * 3
    await put_site(api, registered_pages_only=True)
    registered = await api.post(
        f"/v1/sites/{SITE}/pages", json={"pages": ["/gioi-thieu", "/old-article"]}, headers=ADMIN
    )
    assert registered.json() == {
        "site": SITE,
        "registered": ["/gioi-thieu"],
        "known": 1,
        "titles_set": 0,
    }
    either = [await counted(api, p) for p in ("/gioi-thieu", "/old-article", "/tin-tuc/c", "/nope")]
    assert either == [(True, None)] * 3 + [(False, "unknown_page")]
    assert await live_views(api, "/nope", "/random", "/gioi-thieu") == {
        "site": SITE,
        "site_views": 6,
        "pages": {"/nope": 0, "/random": 0, "/gioi-thieu": 1},
    }
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        held = [await client.hexists(*keys.page_entry(SITE, p)) for p in ("/nope", "/random")]
        known = await client.hexists(*keys.page_entry(SITE, "/gioi-thieu"))
    finally:
        await client.aclose()
    assert held == [False, False] and known


async def test_registering_pages_needs_a_valid_list(api: httpx.AsyncClient, site: str) -> None:
    url = f"/v1/sites/{SITE}/pages"
    for body, field in (
        ({"pages": []}, "pages"),
        ({"pages": "a"}, "pages"),
        ({"pages": [1]}, "pages"),
        ({"pages": ["ok", ""]}, "page"),
        ({"pages": ["p"] * 1001}, "pages"),
    ):
        response = await api.post(url, json=body, headers=ADMIN)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["field"] == field
    unauthorised = await api.post(url, json={"pages": ["a"]})
    assert unauthorised.status_code == 401
    unknown = await api.post("/v1/sites/nosuch/pages", json={"pages": ["a"]}, headers=ADMIN)
    assert unknown.status_code == 404


async def test_settings_survive_redis_losing_its_data(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    await put_site(api, max_pages=1, allowed_origins=[PORTAL])
    client = aioredis.Redis.from_url(settings.redis_url)
    await client.flushall()
    await client.aclose()
    # Another api process (no cached settings) reloads the site from Postgres.
    async with running_api(settings) as other:
        first = await counted(other, "a")
        second = await counted(other, "b")
        refused = await hit(other, "a", headers={"origin": "https://evil.example"})
    assert (first, second) == ((True, None), (False, "page_limit"))
    assert refused.status_code == 403


async def test_only_the_sites_origins_may_count_and_read(api: httpx.AsyncClient, site: str) -> None:
    await put_site(api, allowed_origins=[PORTAL, "http://localhost:8080"])
    ok = await hit(api, "a", headers={"origin": PORTAL})
    local = await hit(api, "a", headers={"origin": "http://localhost:8080"})
    evil = await hit(api, "a", headers={"origin": "https://evil.example"})
    evil_read = await api.get(
        f"/v1/sites/{SITE}/counts", params={"page": "a"}, headers={"origin": "null"}
    )
    evil_pixel = await api.get(
        f"/v1/sites/{SITE}/hit.gif",
        params={"page": "a"},
        headers={"referer": "https://evil.example/article/1"},
    )
    good_pixel = await api.get(
        f"/v1/sites/{SITE}/hit.gif", params={"page": "a"}, headers={"referer": PORTAL + "/x"}
    )
    server_side = await hit(api, "a")  # no Origin, no Referer: not a browser page
    assert (ok.status_code, local.status_code, good_pixel.status_code) == (200, 200, 200)
    assert ok.headers["access-control-allow-origin"] == PORTAL
    assert "origin" in ok.headers["vary"].lower()
    for refused in (evil, evil_read, evil_pixel):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "origin_not_allowed"
        assert refused.json()["error"]["field"] == "origin"
        assert "access-control-allow-origin" not in refused.headers
    assert server_side.json()["page_views"] == 4
    assert (await live_views(api, "a"))["pages"] == {"a": 4}


async def test_preflight_answers_the_sites_origins_only(api: httpx.AsyncClient, site: str) -> None:
    url = f"/v1/sites/{SITE}/hits"
    preflight = {"access-control-request-method": "POST"}
    anyone = await api.options(url, headers={"origin": "https://a.example", **preflight})
    assert anyone.status_code == 204
    assert anyone.headers["access-control-allow-origin"] == "*"
    assert "POST" in anyone.headers["access-control-allow-methods"]
    await put_site(api, allowed_origins=[PORTAL])
    allowed = await api.options(url, headers={"origin": PORTAL, **preflight})
    refused = await api.options(url, headers={"origin": "https://a.example", **preflight})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == PORTAL
    assert refused.status_code == 403
    open_read = await api.get(
        f"/v1/sites/{SITE}/counts", headers={"origin": PORTAL}, params={"page": "a"}
    )
    assert open_read.headers["access-control-allow-origin"] == PORTAL


async def test_admin_routes_answer_no_cors(api: httpx.AsyncClient, site: str) -> None:
    response = await api.put(
        f"/v1/sites/{SITE}", json={}, headers={**ADMIN, "origin": "https://a.example"}
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_unique_visitors_are_flushed_to_postgres_once(
    api: httpx.AsyncClient, site: str, flusher: Flusher, database_url: str, settings: Settings
) -> None:
    # A fixed salt: HyperLogLog may merge two of seven visitors (about 1 run in 700 with a
    # random salt); with this one it does not, on every run.
    client = aioredis.Redis.from_url(settings.redis_url)
    now = datetime.now(UTC)
    for day in (now, now + timedelta(days=1)):
        await client.set(keys.salt_key(day.date().isoformat()), "cd" * 32)
    await client.aclose()
    people = [f"Mozilla/5.0 (X11; Linux x86_64) Firefox/{n}.0" for n in range(5)]
    for ua in people:  # five browsers behind one address: five visitors
        for page in ("a", "a", "b"):
            await hit(api, page, headers={"user-agent": ua})
    for visitor in ("reader-1", "reader-2"):  # the site's own visitor ids
        response = await api.post(f"/v1/sites/{SITE}/hits", json={"page": "a", "visitor": visitor})
        assert response.status_code == 200
    live = (await api.get(f"/v1/sites/{SITE}/counts", params={"page": ["a", "b"]})).json()
    await flusher.flush_once()
    await flusher.flush_once()  # nothing new: must not change visitors
    await hit(api, "b", headers={"user-agent": people[0]})  # a known visitor again
    await flusher.flush_once()
    conn = await asyncpg.connect(database_url)
    try:
        site_row = await conn.fetchrow(
            "SELECT day::text, views, visitors FROM site_views_daily WHERE site = $1", SITE
        )
        page_rows = await conn.fetch(
            "SELECT page, views, visitors FROM page_views_daily WHERE site = $1 ORDER BY page",
            SITE,
        )
    finally:
        await conn.close()
    assert (live["site_visitors"], live["page_visitors"]) == (7, {"a": 7, "b": 5})
    assert tuple(site_row) == (live["day"], 18, 7)
    assert [tuple(r) for r in page_rows] == [("a", 12, 7), ("b", 6, 5)]


async def test_readiness_and_metrics_warn_before_redis_is_full(
    api: httpx.AsyncClient, ops: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    admin = aioredis.Redis.from_url(settings.redis_url)
    try:
        used = int((await admin.info("memory"))["used_memory"])
        bound = int(used / 0.84)  # 84 % used: above the warning line, still taking writes
        await admin.config_set("maxmemory", str(bound))
        near_full = await ops.get("/readyz")
        public = await api.get("/readyz")
        metrics = (await ops.get("/metrics")).text
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.aclose()
    relaxed = await ops.get("/readyz")
    assert (public.status_code, public.json()) == (200, {"status": "warning"})
    assert near_full.status_code == 200
    assert near_full.json()["status"] == "warning"
    assert near_full.json()["checks"]["redis_memory"].startswith("warning: Redis uses 8")
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert samples["viewcounter_redis_memory_max_bytes"] == bound
    assert 0.8 * bound < samples["viewcounter_redis_memory_used_bytes"] < bound
    assert relaxed.json()["status"] == "ok"
    assert relaxed.json()["checks"]["redis_memory"].startswith("ok")


async def test_admin_routes_answer_429_past_the_clients_rate(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(
        redis_url, database_url, admin_rate_limit=3, trusted_proxies=["127.0.0.1"]
    )
    # The limit counts per clock minute: the test's clock decides which one.
    clock = FakeClock()
    clock.advance(15)
    me = {"x-forwarded-for": "198.51.100.7"}
    async with running_api(settings, clock=clock) as client:
        answers = [
            await client.put(f"/v1/sites/{SITE}", json={}, headers={**ADMIN, **me}),
            await client.get(f"/v1/sites/{SITE}", headers=me),  # no token: counted too
            await client.get(f"/v1/sites/{SITE}", headers={**ADMIN, **me}),
            await client.get(f"/v1/sites/{SITE}", headers={**ADMIN, **me}),
        ]
        other_client = await client.get(
            f"/v1/sites/{SITE}", headers={**ADMIN, "x-forwarded-for": "198.51.100.8"}
        )
        hit_path = await hit(client, "a", headers=me)
        clock.advance(45)  # the next minute
        next_minute = await client.get(f"/v1/sites/{SITE}", headers={**ADMIN, **me})
    assert [a.status_code for a in answers] == [201, 401, 200, 429]
    refused = answers[3]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["retry-after"] == "45"  # the rest of the minute
    assert other_client.status_code == 200
    assert hit_path.json()["counted"] is True
    assert next_minute.status_code == 200
