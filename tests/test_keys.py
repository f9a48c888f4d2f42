"""Per-site API keys (issue "Many portals, one service"): every protected route against every
kind of credential, revocation seen by another api process, expiry by the answering process's
clock, rate limits per key, last use, and no secret anywhere but in the answer that made it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis

from services.cli.localpostgres import PostgresProcess
from services.config import Settings
from services.counting import apikeys
from services.logs import JsonFormatter
from tests.support.checks import fetch, fetchval
from tests.support.stack import (
    ADMIN,
    SITE,
    FakeClock,
    copy_template,
    create_migrated_template,
    make_settings,
    register_site,
    running_api,
)

OTHER = "quan1"  # a second site, with keys of its own
GHOST = "ghost"  # a site that does not exist
DAY_S = 86400
REPORT_TOKEN = "test-report-token-0123456789"
INGEST_TOKEN = "test-ingest-token-0123456789"
CREDENTIALS = (
    "no key",
    "malformed",
    "wrong secret",
    "another site's key",
    "revoked",
    "expired",
    "wrong scope",
    "right key",
)


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def create_key(
    client: httpx.AsyncClient,
    site: str,
    scope: str,
    headers: dict[str, str] = ADMIN,
    **fields: object,
) -> dict[str, object]:
    answer = await client.post(
        f"/v1/sites/{site}/keys", json={"scope": scope, **fields}, headers=headers
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, object] = answer.json()
    return body


def secret_of(key: dict[str, object]) -> str:
    secret = key["secret"]
    assert isinstance(secret, str)
    return secret


@dataclass(frozen=True)
class Route:
    """A protected route: how to call it on a site, the scope a key needs, and its success."""

    name: str
    method: str
    path: str  # with {site}, and {key} for the key to revoke
    scope: str
    ok: int
    json: object = None
    content: bytes | None = None


ROUTES = [
    Route("put site", "PUT", "/v1/sites/{site}", "admin", 200, json={"dedupe_window": 60}),
    Route("get site", "GET", "/v1/sites/{site}", "admin", 200),
    Route("pages", "POST", "/v1/sites/{site}/pages", "admin", 200, json={"pages": ["/a"]}),
    Route("import", "POST", "/v1/sites/{site}/import", "admin", 200, content=b"page,views\n/a,5\n"),
    Route(
        "page baseline",
        "PUT",
        "/v1/sites/{site}/pages/baseline",
        "admin",
        200,
        json={"page": "/a", "baseline": 3},
    ),
    Route("site baseline", "PUT", "/v1/sites/{site}/baseline", "admin", 200, json={"baseline": 9}),
    Route("create key", "POST", "/v1/sites/{site}/keys", "admin", 201, json={"scope": "report"}),
    Route("list keys", "GET", "/v1/sites/{site}/keys", "admin", 200),
    Route("revoke key", "DELETE", "/v1/sites/{site}/keys/{key}", "admin", 204),
    Route("audit", "GET", "/v1/sites/{site}/audit", "admin", 200),
    Route("top report", "GET", "/v1/sites/{site}/reports/top", "report", 200),
    Route("daily report", "GET", "/v1/sites/{site}/reports/daily", "report", 200),
    Route("totals", "GET", "/v1/sites/{site}/reports/totals", "report", 200),
    Route(
        "batch",
        "POST",
        "/v1/sites/{site}/hits/batch",
        "ingest",
        200,
        json={"hits": [{"page": "/a"}]},
    ),
]
# A key of the site whose scope does not open the route.
WRONG_SCOPE = {"admin": "report", "report": "ingest", "ingest": "admin"}
UNAUTHORIZED = (401, "unauthorized")
EXPECTED = {
    "no key": UNAUTHORIZED,
    "malformed": UNAUTHORIZED,
    "wrong secret": UNAUTHORIZED,
    "another site's key": (404, "unknown_site"),
    "revoked": UNAUTHORIZED,
    "expired": UNAUTHORIZED,
    "wrong scope": (403, "wrong_scope"),
}


def key_settings(redis_url: str, database_url: str, **overrides: object) -> Settings:
    return make_settings(
        redis_url,
        database_url,
        report_token=REPORT_TOKEN,
        ingest_token=INGEST_TOKEN,
        **overrides,
    )


async def call(
    client: httpx.AsyncClient, route: Route, site: str, headers: dict[str, str], victim: str
) -> httpx.Response:
    extra = {"content-type": "text/csv"} if route.content is not None else {}
    return await client.request(
        route.method,
        route.path.format(site=site, key=victim),
        json=route.json,
        content=route.content,
        headers={**headers, **extra},
    )


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
async def test_every_credential_on_every_protected_route(
    redis_url: str, database_url: str, route: Route
) -> None:
    clock = FakeClock()
    async with running_api(key_settings(redis_url, database_url), clock=clock) as client:
        await register_site(client, SITE)
        await register_site(client, OTHER)
        right = await create_key(client, SITE, route.scope)
        wrong_scope = await create_key(client, SITE, WRONG_SCOPE[route.scope])
        others = await create_key(client, OTHER, route.scope)
        revoked = await create_key(client, SITE, route.scope)
        expiring = await create_key(client, SITE, route.scope, expires_in_days=1)
        victim = await create_key(client, SITE, "report")  # what "revoke key" revokes
        gone = await client.delete(f"/v1/sites/{SITE}/keys/{revoked['id']}", headers=ADMIN)
        assert gone.status_code == 204
        clock.advance(DAY_S)  # the expiring key's last second has passed
        headers = {
            "no key": {},
            "malformed": {"authorization": f"Basic {secret_of(right)}"},
            "wrong secret": bearer(apikeys.new_secret()),
            "another site's key": bearer(secret_of(others)),
            "revoked": bearer(secret_of(revoked)),
            "expired": bearer(secret_of(expiring)),
            "wrong scope": bearer(secret_of(wrong_scope)),
            "right key": bearer(secret_of(right)),
        }
        victim_id = str(victim["id"])
        answers = {
            name: await call(client, route, SITE, headers[name], victim_id) for name in CREDENTIALS
        }
        # A key cannot tell a site that exists from one that does not: byte for byte.
        ghost = await call(client, route, GHOST, headers["another site's key"], victim_id)
        nonexistent = await client.get(f"/v1/sites/{GHOST}", headers=ADMIN)
        listed = (await client.get(f"/v1/sites/{SITE}/keys", headers=ADMIN)).json()["keys"]

    table = {
        name: (r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else None)
        for name, r in answers.items()
    }
    assert table == {**EXPECTED, "right key": (route.ok, None)}, {
        n: r.text for n, r in answers.items()
    }
    refusals = [answers[n].content for n in CREDENTIALS if EXPECTED.get(n) == UNAUTHORIZED]
    assert len(set(refusals)) == 1  # the same 401, whatever was wrong
    assert answers["no key"].headers["www-authenticate"] == "Bearer"
    other_site = answers["another site's key"]
    assert nonexistent.status_code == 404
    assert other_site.content == ghost.content == nonexistent.content
    assert other_site.headers["content-type"] == nonexistent.headers["content-type"]
    assert {k["id"]: k["revoked_at"] is not None for k in listed}[victim_id] is (
        route.name == "revoke key"
    )


async def test_the_operator_and_the_global_tokens_keep_working(
    redis_url: str, database_url: str
) -> None:
    async with running_api(key_settings(redis_url, database_url)) as client:
        await register_site(client, SITE)
        await register_site(client, OTHER)
        report_on_both = [
            (await client.get(f"/v1/sites/{s}/reports/totals", headers=bearer(REPORT_TOKEN)))
            for s in (SITE, OTHER)
        ]
        batch = {"hits": [{"page": "/a"}]}
        ingest_on_both = [
            await client.post(f"/v1/sites/{s}/hits/batch", json=batch, headers=bearer(INGEST_TOKEN))
            for s in (SITE, OTHER)
        ]
        report_on_admin = await client.get(f"/v1/sites/{SITE}", headers=bearer(REPORT_TOKEN))
        ingest_on_report = await client.get(
            f"/v1/sites/{SITE}/reports/totals", headers=bearer(INGEST_TOKEN)
        )
        # Creating a site is the operator's: a site's admin key cannot, even "its own" name.
        admin_key = await create_key(client, SITE, "admin")
        new_site = await client.put(
            "/v1/sites/newsite", json={}, headers=bearer(secret_of(admin_key))
        )
        by_operator = await client.put("/v1/sites/newsite", json={}, headers=ADMIN)
        # An admin key makes and revokes its own site's keys.
        made = await create_key(client, SITE, "ingest", bearer(secret_of(admin_key)), name="shop")
        revoked = await client.delete(
            f"/v1/sites/{SITE}/keys/{made['id']}", headers=bearer(secret_of(admin_key))
        )
        unknown = await client.delete(f"/v1/sites/{SITE}/keys/000000000000", headers=ADMIN)
    assert [r.status_code for r in report_on_both + ingest_on_both] == [200] * 4
    assert (report_on_admin.status_code, ingest_on_report.status_code) == (401, 401)
    assert new_site.status_code == 404 and new_site.json()["error"]["code"] == "unknown_site"
    assert by_operator.status_code == 201
    assert (made["scope"], made["name"], made["expires_at"]) == ("ingest", "shop", None)
    assert revoked.status_code == 204
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_key"


async def test_bad_key_requests_name_the_field(redis_url: str, database_url: str) -> None:
    async with running_api(key_settings(redis_url, database_url)) as client:
        await register_site(client, SITE)
        url = f"/v1/sites/{SITE}/keys"
        bodies = [
            {},
            {"scope": "owner"},
            {"scope": "admin", "name": 5},
            {"scope": "admin", "name": "x" * 101},
            {"scope": "admin", "expires_in_days": 0},
            {"scope": "admin", "expires_in_days": True},
            {"scope": "admin", "colour": "red"},
        ]
        answers = [await client.post(url, json=b, headers=ADMIN) for b in bodies]
        unknown_site = await client.post(
            f"/v1/sites/{GHOST}/keys", json={"scope": "admin"}, headers=ADMIN
        )
        listed = await client.get(url, headers=ADMIN)
    assert [(a.status_code, a.json()["error"]["field"]) for a in answers] == [
        (422, "scope"),
        (422, "scope"),
        (422, "name"),
        (422, "name"),
        (422, "expires_in_days"),
        (422, "expires_in_days"),
        (422, "colour"),
    ]
    assert unknown_site.status_code == 404
    assert listed.json() == {"keys": []}  # nothing half-made


@asynccontextmanager
async def two_api_processes(
    settings: Settings, clocks: tuple[FakeClock, FakeClock]
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two api apps (as two processes are: each its own cache) on one Redis and Postgres."""
    async with (
        running_api(settings, clock=clocks[0]) as a,
        running_api(settings, clock=clocks[1]) as b,
    ):
        yield a, b


async def test_a_revocation_is_seen_by_another_api_process_within_the_bound(
    redis_url: str, database_url: str
) -> None:
    clocks = (FakeClock(), FakeClock())
    settings = key_settings(redis_url, database_url)
    async with two_api_processes(settings, clocks) as (a, b):
        await register_site(a, SITE)
        key = await create_key(a, SITE, "report")
        url = f"/v1/sites/{SITE}/reports/totals"
        before = await b.get(url, headers=bearer(secret_of(key)))  # b caches the key
        revoked = await a.delete(f"/v1/sites/{SITE}/keys/{key['id']}", headers=ADMIN)
        at_once_in_a = await a.get(url, headers=bearer(secret_of(key)))
        # b reads the revocation generation at most once a second: within it, its cache holds.
        still_cached_in_b = await b.get(url, headers=bearer(secret_of(key)))
        clocks[1].advance(apikeys.GENERATION_CHECK_S)
        after_check_in_b = await b.get(url, headers=bearer(secret_of(key)))
    assert before.status_code == 200 and revoked.status_code == 204
    assert at_once_in_a.status_code == 401
    assert still_cached_in_b.status_code == 200
    assert after_check_in_b.status_code == 401


async def test_without_news_from_redis_a_cached_key_lives_at_most_the_cache_age(
    redis_url: str, database_url: str
) -> None:
    """The bound that holds whatever Redis does: a key revoked in Postgres with no generation
    bump (Redis unreachable at that moment) is refused once the cache entry is 5 s old."""
    clock = FakeClock()
    settings = key_settings(redis_url, database_url)
    async with running_api(settings, clock=clock) as client:
        await register_site(client, SITE)
        key = await create_key(client, SITE, "report")
        url = f"/v1/sites/{SITE}/reports/totals"
        cached = await client.get(url, headers=bearer(secret_of(key)))
        conn_url = settings.database_url
        await fetch(conn_url, "UPDATE api_keys SET revoked_at = now() WHERE id = $1", key["id"])
        clock.advance(apikeys.KEY_CACHE_S - 0.5)
        within = await client.get(url, headers=bearer(secret_of(key)))
        clock.advance(0.5)
        past = await client.get(url, headers=bearer(secret_of(key)))
    assert (cached.status_code, within.status_code, past.status_code) == (200, 200, 401)


async def test_expiry_is_judged_by_the_clock_of_the_answering_process(
    redis_url: str, database_url: str
) -> None:
    early, late = FakeClock(), FakeClock()
    late.advance(2 * DAY_S)
    settings = key_settings(redis_url, database_url)
    async with two_api_processes(settings, (early, late)) as (a, b):
        await register_site(a, SITE)
        key = await create_key(a, SITE, "report", expires_in_days=1)
        url = f"/v1/sites/{SITE}/reports/totals"
        in_a = await a.get(url, headers=bearer(secret_of(key)))
        in_b = await b.get(url, headers=bearer(secret_of(key)))
        early.advance(DAY_S - 1)
        last_second = await a.get(url, headers=bearer(secret_of(key)))
        early.advance(1)
        expired = await a.get(url, headers=bearer(secret_of(key)))
    assert (in_a.status_code, in_b.status_code) == (200, 401)
    assert (last_second.status_code, expired.status_code) == (200, 401)


async def test_the_rate_limit_counts_per_key_and_per_client_otherwise(
    redis_url: str, database_url: str
) -> None:
    clock = FakeClock()
    clock.advance(5)
    settings = key_settings(
        redis_url, database_url, admin_rate_limit=3, trusted_proxies=["127.0.0.1"]
    )
    url = f"/v1/sites/{SITE}/reports/totals"

    def sender(ip: str, secret: str) -> dict[str, str]:
        return {"x-forwarded-for": ip, **bearer(secret)}

    async with running_api(settings, clock=clock) as client:
        await register_site(client, SITE)  # from 127.0.0.1
        first = await create_key(client, SITE, "report")
        second = await create_key(client, SITE, "report")
        # One key from three addresses shares one count; another key from the same
        # addresses has its own; the report token counts per address.
        one = [
            (await client.get(url, headers=sender(ip, secret_of(first)))).status_code
            for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4")
        ]
        two = [
            (await client.get(url, headers=sender("198.51.100.1", secret_of(second)))).status_code
            for _ in range(4)
        ]
        token = [
            (await client.get(url, headers=sender("198.51.100.9", REPORT_TOKEN))).status_code
            for _ in range(4)
        ]
        clock.advance(60)
        next_minute = await client.get(url, headers=sender("198.51.100.1", secret_of(first)))
    assert one == [200, 200, 200, 429]
    assert two == [200, 200, 200, 429]
    assert token == [200, 200, 200, 429]
    assert next_minute.status_code == 200


async def test_last_use_is_written_in_the_background_not_per_request(
    redis_url: str, database_url: str
) -> None:
    clock = FakeClock()
    settings = key_settings(redis_url, database_url)
    async with running_api(settings, clock=clock) as client:
        await register_site(client, SITE)
        key = await create_key(client, SITE, "ingest")
        batch = {"hits": [{"page": "/a"}]}
        url = f"/v1/sites/{SITE}/hits/batch"
        for _ in range(3):
            assert (
                await client.post(url, json=batch, headers=bearer(secret_of(key)))
            ).status_code == 200
            clock.advance(1)
        during = await fetchval(
            database_url, "SELECT last_used_at FROM api_keys WHERE id = $1", key["id"]
        )
    # Written when the process stops (and every 30 s while it runs): the last use's time.
    after = await fetchval(
        database_url,
        "SELECT extract(epoch FROM last_used_at)::float8 FROM api_keys WHERE id = $1",
        key["id"],
    )
    assert during is None  # no write on the request path
    assert after == clock.now - 1


async def test_no_secret_reaches_postgres_redis_or_a_log_line(
    redis_url: str,
    database_url: str,
    pg_server: PostgresProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = key_settings(redis_url, database_url, log_level="debug")
    made: list[str] = []
    async with running_api(settings) as client:
        await register_site(client, SITE)
        for scope in ("admin", "report", "ingest"):
            made.append(secret_of(await create_key(client, SITE, scope, name=f"for {scope}")))
        admin, report, ingest = made
        await client.put(f"/v1/sites/{SITE}", json={"dedupe_window": 5}, headers=bearer(admin))
        await client.get(f"/v1/sites/{SITE}/reports/top", headers=bearer(report))
        await client.post(
            f"/v1/sites/{SITE}/hits/batch", json={"hits": [{"page": "/a"}]}, headers=bearer(ingest)
        )
        await client.get(f"/v1/sites/{SITE}/reports/top", headers=bearer(ingest))  # 403
        listed = (await client.get(f"/v1/sites/{SITE}/keys", headers=bearer(admin))).json()
        for key in listed["keys"]:
            await client.delete(f"/v1/sites/{SITE}/keys/{key['id']}", headers=ADMIN)
        await client.get(f"/v1/sites/{SITE}/reports/top", headers=bearer(report))  # 401
    pg_dump = await asyncio.create_subprocess_exec(
        str(pg_server.bin_dir / "pg_dump"), database_url, stdout=asyncio.subprocess.PIPE
    )
    dump = (await pg_dump.communicate())[0].decode()
    assert pg_dump.returncode == 0
    assert "api_keys" in dump and "secret_sha256" in dump
    stored = await fetch(database_url, "SELECT secret_sha256 FROM api_keys")
    assert sorted(r["secret_sha256"] for r in stored) == sorted(
        apikeys.secret_sha256(s) for s in made
    )
    redis = aioredis.Redis.from_url(redis_url)
    try:
        values = []
        async for name in redis.scan_iter(count=1000):
            values.append(name)
            values.append(await redis.dump(name) or b"")
    finally:
        await redis.aclose()
    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert len(lines) > 0
    for secret in made:
        body = secret.removeprefix(apikeys.SECRET_PREFIX)
        assert body not in dump
        assert not any(body.encode() in v for v in values)
        assert not any(body in line for line in lines)
    assert listed["keys"] and all("secret" not in k for k in listed["keys"])


async def test_a_cached_key_costs_no_postgres_round_trip(
    own_postgres: PostgresProcess, redis_url: str
) -> None:
    """Once a process has checked a key, the batch route with it works with Postgres gone:
    no request of it asks Postgres (the batch route itself needs only Redis)."""
    await create_migrated_template(own_postgres)
    database_url = await copy_template(own_postgres)
    clock = FakeClock()  # not moved: the cache never ages in this test
    settings = key_settings(redis_url, database_url, statement_timeout=2)
    url = f"/v1/sites/{SITE}/hits/batch"
    async with running_api(settings, clock=clock) as client:
        await register_site(client, SITE)
        key = await create_key(client, SITE, "ingest")
        batch = {"hits": [{"page": "/a"}]}
        first = await client.post(url, json=batch, headers=bearer(secret_of(key)))
        own_postgres.kill()
        later = [
            (await client.post(url, json=batch, headers=bearer(secret_of(key)))).status_code
            for _ in range(5)
        ]
        unknown = await client.post(url, json=batch, headers=bearer(apikeys.new_secret()))
    assert first.status_code == 200
    assert later == [200] * 5
    # A secret it has not seen must be looked up: Postgres is gone, so 503, never a 200.
    assert unknown.status_code == 503
