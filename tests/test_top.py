"""GET /v1/sites/{site}/top (the most-read list) and page titles, on real Redis and Postgres:
the periods' local days across midnight, Monday and the 1st in Asia/Ho_Chi_Minh, exact views
before and after a flush, the 60 s staleness on the app's clock, only counted views, the
site's switch and origins, the parameters, and titles set by admins or learned from hits."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from services.config import Settings
from services.db import top as db_top
from services.flusher.worker import Flusher
from tests.support import stack
from tests.support.stack import ADMIN, SITE, FakeClock, make_settings, register_site, running_api

ORIGIN = "https://quan11.hochiminhcity.gov.vn"


def hcm(text: str) -> float:
    """An instant given in Ho Chi Minh City's local time (UTC+7), 'YYYY-MM-DD HH:MM:SS'."""
    return datetime.fromisoformat(text + "+07:00").astimezone(UTC).timestamp()


async def hit(
    api: httpx.AsyncClient, page: str, *, visitor: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"page": page, **extra}
    if visitor is not None:
        body["visitor"] = visitor
    answer = await api.post(f"/v1/sites/{SITE}/hits", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def top(api: httpx.AsyncClient, period: str = "today", **params: Any) -> dict[str, Any]:
    answer = await api.get(f"/v1/sites/{SITE}/top", params={"period": period, **params})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store, max-age=0"
    result: dict[str, Any] = answer.json()
    return result


def ranked(answer: dict[str, Any]) -> list[tuple[str, int]]:
    return [(p["page"], p["views"]) for p in answer["pages"]]


def titled(answer: dict[str, Any]) -> dict[str, str | None]:
    return {p["page"]: p["title"] for p in answer["pages"]}


async def put_site(api: httpx.AsyncClient, **settings: Any) -> dict[str, Any]:
    answer = await api.put(f"/v1/sites/{SITE}", json=settings, headers=ADMIN)
    assert answer.status_code in (200, 201), answer.text
    result: dict[str, Any] = answer.json()
    return result


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(hcm("2026-05-31 23:58:00"))  # a Sunday, the last day of May


@pytest.fixture
async def hcm_api(settings: Settings, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings, clock=clock) as client:
        await register_site(client)
        yield client


async def test_top_of_today_week_and_month_across_midnight_monday_and_the_first(
    hcm_api: httpx.AsyncClient, clock: FakeClock, flusher: Flusher
) -> None:
    api = hcm_api
    for page, n in (("/a", 3), ("/c", 2), ("/b", 2), ("/z", 1)):
        for _ in range(n):
            await hit(api, page)
    may = [("/a", 3), ("/b", 2), ("/c", 2), ("/z", 1)]  # ties by page id
    for period, first in (("today", "2026-05-31"), ("week", "2026-05-25"), ("month", "2026-05-01")):
        answer = await top(api, period)
        assert answer == {
            "site": SITE,
            "period": period,
            "from": first,
            "to": "2026-05-31",
            "pages": [{"page": p, "title": None, "views": v} for p, v in may],
        }
    assert ranked(await top(api, "month", limit=2)) == may[:2]
    assert ranked(await top(api, "week", limit=1)) == may[:1]
    assert (await flusher.flush_once()).hits == 8
    clock.advance(61)  # 23:59:01: the cache is past its 60 s
    assert ranked(await top(api)) == may  # flushed: the same numbers, from Postgres

    clock.now = hcm("2026-06-01 00:00:30")  # Monday the 1st: a new day, week and month
    await hit(api, "/z")
    await hit(api, "/d")
    june = [("/d", 1), ("/z", 1)]
    for period in ("today", "week", "month"):
        answer = await top(api, period)
        assert (answer["from"], answer["to"]) == ("2026-06-01", "2026-06-01")
        assert ranked(answer) == june, period

    clock.now = hcm("2026-06-03 12:00:00")  # Wednesday
    for _ in range(2):
        await hit(api, "/b")
    assert ranked(await top(api)) == [("/b", 2)]
    week = await top(api, "week")
    assert (week["from"], week["to"]) == ("2026-06-01", "2026-06-03")
    assert ranked(week) == [("/b", 2), ("/d", 1), ("/z", 1)]
    assert (await flusher.flush_once()).hits == 4  # Monday's and Wednesday's

    clock.now = hcm("2026-06-08 00:00:00")  # the next Monday: the week starts again
    await hit(api, "/z")
    week = await top(api, "week")
    assert (week["from"], ranked(week)) == ("2026-06-08", [("/z", 1)])
    month = await top(api, "month")
    assert (month["from"], month["to"]) == ("2026-06-01", "2026-06-08")
    assert ranked(month) == [("/b", 2), ("/z", 2), ("/d", 1)]  # flushed plus pending
    await flusher.flush_once()
    clock.advance(61)
    assert ranked(await top(api, "month")) == [("/b", 2), ("/z", 2), ("/d", 1)]


async def test_the_list_is_at_most_60_seconds_stale_on_the_apps_clock(
    hcm_api: httpx.AsyncClient, clock: FakeClock, flusher: Flusher
) -> None:
    api = hcm_api
    clock.now = hcm("2026-06-03 10:00:00")
    await hit(api, "/a")
    assert ranked(await top(api)) == [("/a", 1)]
    await hit(api, "/b")
    await hit(api, "/b")
    clock.advance(59)
    assert ranked(await top(api)) == [("/a", 1)]  # the cached ranking, for every limit
    assert ranked(await top(api, limit=50)) == [("/a", 1)]
    await flusher.flush_once()
    clock.advance(1)  # 60 s after it was computed
    assert ranked(await top(api)) == [("/b", 2), ("/a", 1)]
    await hit(api, "/a")
    await hit(api, "/a")
    clock.advance(60)
    assert ranked(await top(api)) == [("/a", 3), ("/b", 2)]


async def test_concurrent_reads_share_one_computation(
    hcm_api: httpx.AsyncClient, clock: FakeClock
) -> None:
    await hit(hcm_api, "/a")
    answers = await asyncio.gather(*(top(hcm_api, limit=n) for n in range(1, 21)))
    assert all(ranked(a) == [("/a", 1)] for a in answers)


async def test_top_never_lists_a_bots_or_a_rate_limited_clients_page_and_duplicates_add_nothing(
    redis_url: str, database_url: str, flusher: Flusher
) -> None:
    settings = make_settings(redis_url, database_url, dedupe_window=1800, rate_limit=3)
    clock = FakeClock(hcm("2026-06-03 10:00:00"))
    async with running_api(settings, clock=clock) as api:
        await register_site(api)
        await put_site(api, learn_titles=True)
        assert (await hit(api, "/x", visitor="v1", title="X"))["counted"] is True
        assert (await hit(api, "/y", visitor="v2", title="Y"))["counted"] is True
        again = await hit(api, "/y", visitor="v2", title="Y again")
        assert again["reason"] == "duplicate"
        limited = await hit(api, "/z", visitor="v3", title="Z")
        assert limited["reason"] == "rate_limited"
        limited = await hit(api, "/x", visitor="v4", title="X limited")
        assert limited["reason"] == "rate_limited"
        bot = await api.post(
            f"/v1/sites/{SITE}/hits",
            json={"page": "/bot", "title": "Bot"},
            headers={"user-agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"},
        )
        assert bot.json()["reason"] == "bot"
        expected = [("/x", 1), ("/y", 1)]
        assert ranked(await top(api)) == expected
        assert (await flusher.flush_once()).hits == 2
        clock.advance(61)
        answer = await top(api, "month")
        assert ranked(answer) == expected
        # A duplicate's title is learned; a rate-limited or a bot's hit teaches nothing.
        assert titled(answer) == {"/x": "X", "/y": "Y again"}


async def test_a_site_can_turn_the_list_off_and_its_origins_apply(
    hcm_api: httpx.AsyncClient,
) -> None:
    api = hcm_api
    await hit(api, "/a")
    assert (await put_site(api))["public_top"] is True  # the default
    settings = await put_site(api, public_top=False)
    assert settings["public_top"] is False
    assert (await api.get(f"/v1/sites/{SITE}", headers=ADMIN)).json()["public_top"] is False
    off = await api.get(f"/v1/sites/{SITE}/top")
    assert off.status_code == 404
    assert off.json()["error"]["code"] == "not_found"
    assert (await api.get(f"/v1/sites/{SITE}/top?period=week&limit=5")).status_code == 404

    await put_site(api, public_top=True, allowed_origins=[ORIGIN])
    refused = await api.get(f"/v1/sites/{SITE}/top", headers={"origin": "https://evil.example"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"
    by_referer = await api.get(
        f"/v1/sites/{SITE}/top", headers={"referer": "https://evil.example/page"}
    )
    assert by_referer.status_code == 403
    allowed = await api.get(f"/v1/sites/{SITE}/top", headers={"origin": ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert ranked(allowed.json()) == [("/a", 1)]
    preflight = await api.options(
        f"/v1/sites/{SITE}/top",
        headers={"origin": ORIGIN, "access-control-request-method": "GET"},
    )
    assert preflight.status_code == 204


async def test_bad_parameters_and_sites_are_refused_naming_the_field(
    hcm_api: httpx.AsyncClient,
) -> None:
    api = hcm_api
    for query, field in [
        ("period=year", "period"),
        ("period=", "period"),
        ("period=TODAY", "period"),
        ("limit=0", "limit"),
        ("limit=51", "limit"),
        ("limit=", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("period=week&limit=1.5", "limit"),
    ]:
        answer = await api.get(f"/v1/sites/{SITE}/top?{query}")
        assert answer.status_code == 422, query
        assert answer.json()["error"]["field"] == field, query
        assert answer.json()["error"]["code"] == "invalid_field", query
    for page in range(60):
        await hit(api, f"/p{page:02d}")
    assert len((await top(api, limit=1))["pages"]) == 1
    assert len((await top(api, limit=50))["pages"]) == 50
    assert len((await top(api))["pages"]) == 10
    assert (await top(api, limit=50))["pages"][-1]["page"] == "/p49"
    unknown = await api.get("/v1/sites/nowhere/top")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_site"
    counts_bad = await api.get("/v1/sites/Bad%20Site/counts")
    bad = await api.get("/v1/sites/Bad%20Site/top")
    assert (bad.status_code, bad.json()) == (counts_bad.status_code, counts_bad.json())
    assert bad.status_code == 422


async def test_titles_set_by_admins_and_learned_from_hits(
    settings: Settings, redis_url: str, flusher: Flusher
) -> None:
    clock = FakeClock(hcm("2026-06-03 10:00:00"))
    nfd = unicodedata.normalize("NFD", "Phát huy vai trò")
    async with running_api(settings, clock=clock) as api:
        await register_site(api)
        pages = await api.post(
            f"/v1/sites/{SITE}/pages",
            json={
                "pages": [
                    "/plain",
                    {"page": "/a", "title": f"  {nfd}  "},
                    {"page": "/b", "title": "Tin B"},
                    {"page": "/b", "title": "Tin B mới"},  # the last one wins
                ]
            },
            headers=ADMIN,
        )
        assert pages.status_code == 200, pages.text
        assert pages.json()["registered"] == ["/plain", "/a", "/b"]
        assert pages.json()["titles_set"] == 2
        for entry, field in [
            ({"page": "/c", "title": "x" * 301}, "title"),
            ({"page": "/c", "title": "a\u202eb"}, "title"),
            ({"page": "/c", "title": "tab\there"}, "title"),
            ({"page": "/c", "title": 7}, "title"),
            ({"page": "\x00", "title": "ok"}, "page"),
            ({"title": "no page"}, "page"),
            ({"page": "/c", "name": "x"}, "name"),
        ]:
            refused = await api.post(
                f"/v1/sites/{SITE}/pages", json={"pages": ["/ok", entry]}, headers=ADMIN
            )
            assert refused.status_code == 422, entry
            assert refused.json()["error"]["field"] == field, entry
            assert "pages[1]" in refused.json()["error"]["message"], entry
        imported = await api.post(
            f"/v1/sites/{SITE}/import",
            content=f"page,views,title\n/c,0,Từ CSV\n/d,0\n/e,0,{'y' * 301}\n".encode(),
            headers={**ADMIN, "content-type": "text/csv"},
        )
        assert imported.status_code == 200, imported.text
        report = imported.json()
        assert report["titles_set"] == 1
        assert [(r["line"], r["field"]) for r in report["rejected"]] == [(4, "title")]

        for page in ("/a", "/b", "/c", "/d", "/e", "/plain"):
            await hit(api, page, title=f"Learned {page}")  # learn_titles is off: ignored
        await flusher.flush_once()
        answer = await top(api)
        assert titled(answer) == {
            "/a": "Phát huy vai trò",
            "/b": "Tin B mới",
            "/c": "Từ CSV",
            "/d": None,
            "/e": None,
            "/plain": None,
        }

        assert (await put_site(api, learn_titles=True))["learn_titles"] is True
        await hit(api, "/e", title="E first")
        await hit(api, "/e", title="  E   last  ")
        await hit(api, "/a", title="Vandal")  # the admin's title wins
        await hit(api, "/d")  # no title: nothing learned
        await hit(api, "/d", title="   ")  # blank: nothing learned
        refused = await api.post(f"/v1/sites/{SITE}/hits", json={"page": "/d", "title": "a\x00"})
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "title"
        too_long = await api.post(
            f"/v1/sites/{SITE}/hits", json={"page": "/d", "title": "z" * 301}
        )
        assert (too_long.status_code, too_long.json()["error"]["field"]) == (422, "title")
        report = await flusher.flush_once()
        assert report.titles == 2
        clock.advance(61)
        answer = await top(api)
        assert titled(answer)["/e"] == "E   last"
        assert titled(answer)["/a"] == "Phát huy vai trò"
        assert titled(answer)["/d"] is None
        assert (await flusher.flush_once()).titles == 0  # moved once, then gone from Redis

        # The admin clears its title: the learned one shows.
        cleared = await api.post(
            f"/v1/sites/{SITE}/pages",
            json={"pages": [{"page": "/a", "title": None}]},
            headers=ADMIN,
        )
        assert cleared.json()["titles_set"] == 1
        clock.advance(61)
        assert titled(await top(api))["/a"] == "Vandal"

        # Redis loses everything: counts and titles come back from Postgres.
        redis = aioredis.Redis.from_url(redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()
        clock.advance(61)
        after = await top(api)
        assert titled(after) == {**titled(answer), "/a": "Vandal"}
        assert ranked(after) == ranked(answer)


async def test_a_learned_title_newer_than_the_one_moved_stays_for_the_next_pass(
    hcm_api: httpx.AsyncClient, clock: FakeClock, flusher: Flusher
) -> None:
    api = hcm_api
    await put_site(api, learn_titles=True)
    await hit(api, "/a", title="Old")
    store = flusher._store
    (unit,) = [u async for u in _title_units(store)]
    chunks = [c async for c in store.learned_titles(unit)]
    assert chunks == [{"/a": "Old"}]
    await hit(api, "/a", title="New")  # learned while the flusher moves "Old"
    assert await store.forget_titles(unit, chunks[0]) == 0
    assert (await flusher.flush_once()).titles == 1
    clock.advance(61)
    assert titled(await top(api)) == {"/a": "New"}


async def _title_units(store: Any) -> AsyncIterator[str]:
    work = await store.find_work()  # units with pending deltas or learned titles
    for unit in work.units:
        yield unit


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


@pytest.mark.timeout(60)
async def test_the_ranking_reads_only_the_periods_days_on_a_year_of_data(
    database_url: str,
) -> None:
    """A year of a site with 20,000 pages, 1,000 viewed each day, beside another site: the
    month's ranking reads exactly the month's rows through the covering index, and the views
    of pages with unflushed views come through the primary key."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(stack.BIG_AND_OTHER_SITES_SQL)
        await conn.execute(
            """
            INSERT INTO page_views (site, page, views)
                SELECT s, '/bai-viet/' || i, 0 FROM generate_series(0, 19999) i,
                       unnest(ARRAY['big', 'other']) s;
            INSERT INTO page_views_daily (site, page, day, views)
                SELECT s, '/bai-viet/' || ((d * 1000 + j) % 20000), date '2024-01-01' + d,
                       1 + (j % 50)
                FROM generate_series(0, 365) d, generate_series(0, 999) j,
                     unnest(ARRAY['big', 'other']) s
                ORDER BY d, s, j;  -- in day order, as flushes append them
            """
        )
        await conn.execute("VACUUM ANALYZE page_views_daily")
        in_month = await conn.fetchval(
            "SELECT count(*) FROM page_views_daily WHERE site = 'big' "
            "AND day BETWEEN '2024-06-01' AND '2024-06-30'"
        )
        first = datetime(2024, 6, 1).date()
        last = datetime(2024, 6, 30).date()
        plans = {}
        for name, query, args in [
            ("top", db_top.Q["top_pages"], ("big", first, last, 50)),
            ("pages", db_top.Q["pages_views"], ("big", first, last, ["/bai-viet/1", "/new"])),
        ]:
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", *args)
            plans[name] = json.loads(raw)[0]["Plan"]
    finally:
        await conn.close()
    nodes = {name: _plan_nodes(plan) for name, plan in plans.items()}
    seq = [n.get("Relation Name") for ns in nodes.values() for n in ns if "Seq" in n["Node Type"]]
    assert seq == [], plans
    index = [n for n in nodes["top"] if n.get("Index Name") == "page_views_daily_site_day"]
    assert len(index) == 1 and index[0]["Actual Rows"] == in_month == 30 * 1000, plans["top"]
    assert index[0]["Node Type"] in ("Index Only Scan", "Bitmap Index Scan")
    by_page = [n for n in nodes["pages"] if n.get("Relation Name") == "page_views_daily"]
    assert [n.get("Index Name") for n in by_page] == ["page_views_daily_pkey"], plans["pages"]
