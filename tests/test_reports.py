"""Reports from Postgres: exact daily and top results for known hits across days and time
zones, JSON and CSV, the CLI, the views and read-only role for report writers, and EXPLAIN
plans that read only the days asked for on a year of 100,000 pages."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from services.cli.localpostgres import PostgresProcess
from services.config import Settings
from services.db import reports as db_reports
from tests.support import stack
from tests.support.cli import run_cli
from tests.support.stack import (
    ADMIN,
    TEST_AUTHOR,
    flusher_for,
    live_counts,
    make_settings,
    running_api,
)

REPORT_TOKEN = "report-token-for-editors-0123"
HCM = "quan11"  # Asia/Ho_Chi_Minh, UTC+7
LON = "london"  # UTC in winter


def at(text: str) -> float:
    """A UTC instant, 'YYYY-MM-DD HH:MM:SS'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# (UTC instant, page): the same hits go to both sites.
HITS = [
    ("2025-03-05 03:00:00", "/a"),
    ("2025-03-05 04:00:00", "/a"),
    ("2025-03-05 05:00:00", "/b"),
    ("2025-03-07 10:00:00", "/b"),
    ("2025-03-07 10:00:01", "/b"),
    ("2025-03-07 10:00:02", "/c"),
    # 23:59:30 in Ho Chi Minh City on the 9th; 16:59:30 in London, the 9th too.
    ("2025-03-09 16:59:30", "/late"),
    # 00:00:30 in Ho Chi Minh City on the 10th; still the 9th in London.
    ("2025-03-09 17:00:30", "/early"),
    ("2025-03-10 23:30:00", "/a"),  # the 11th in Ho Chi Minh City, the 10th in London
]


async def record_known_hits(settings: Settings) -> None:
    clock = [at("2025-03-01 00:00:00")]
    async with live_counts(settings, clock) as live, flusher_for(settings) as flusher:
        await live.register(HCM, {"timezone": "Asia/Ho_Chi_Minh"}, TEST_AUTHOR)
        await live.register(LON, {"timezone": "Europe/London"}, TEST_AUTHOR)
        for when, page in HITS:
            clock[0] = at(when)
            for site in (HCM, LON):
                result = await live.hit(site, page, visitor=None, ip="10.0.0.1", user_agent="x")
                assert result.outcome == "counted"
            if page == "/late":
                # Flushed after midnight in Ho Chi Minh City: still the 9th's.
                clock[0] = at("2025-03-09 17:30:00")
                await flusher.flush_once()
        await flusher.flush_once()


@pytest.fixture
def report_settings(redis_url: str, database_url: str) -> Settings:
    return make_settings(redis_url, database_url, report_token=REPORT_TOKEN)


async def get(client: httpx.AsyncClient, path: str, **params: object) -> Any:
    response = await client.get(
        path, params=params, headers={"authorization": f"Bearer {REPORT_TOKEN}"}
    )
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/csv"):
        return response.text
    return response.json()


def daily_views(body: Any) -> dict[str, int]:
    return {d["day"]: d["views"] for d in body["days"] if d["views"]}


async def test_daily_and_top_are_exact_in_each_sites_time_zone(report_settings: Settings) -> None:
    await record_known_hits(report_settings)
    async with running_api(report_settings) as api:
        hcm_daily = await get(
            api, f"/v1/sites/{HCM}/reports/daily", **{"from": "2025-03-04"}, to="2025-03-11"
        )
        lon_daily = await get(
            api, f"/v1/sites/{LON}/reports/daily", **{"from": "2025-03-04"}, to="2025-03-11"
        )
        hcm_late = await get(
            api,
            f"/v1/sites/{HCM}/reports/daily",
            **{"from": "2025-03-09"},
            to="2025-03-10",
            page="/late",
        )
        hcm_top = await get(
            api, f"/v1/sites/{HCM}/reports/top", **{"from": "2025-03-05"}, to="2025-03-09"
        )
        lon_top = await get(
            api, f"/v1/sites/{LON}/reports/top", **{"from": "2025-03-09"}, to="2025-03-10", limit=2
        )
        hcm_csv = await get(
            api,
            f"/v1/sites/{HCM}/reports/top",
            **{"from": "2025-03-05"},
            to="2025-03-09",
            format="csv",
        )
        daily_csv = await get(
            api,
            f"/v1/sites/{HCM}/reports/daily",
            **{"from": "2025-03-09"},
            to="2025-03-11",
            format="csv",
        )
    assert daily_views(hcm_daily) == {
        "2025-03-05": 3,
        "2025-03-07": 3,
        "2025-03-09": 1,
        "2025-03-10": 1,
        "2025-03-11": 1,
    }
    assert len(hcm_daily["days"]) == 8 and hcm_daily["views"] == 9  # zeros included
    assert hcm_daily["timezone"] == "Asia/Ho_Chi_Minh"
    assert daily_views(lon_daily) == {
        "2025-03-05": 3,
        "2025-03-07": 3,
        "2025-03-09": 2,
        "2025-03-10": 1,
    }
    assert daily_views(hcm_late) == {"2025-03-09": 1}
    assert hcm_top["site_views"] == 7
    assert [(p["rank"], p["page"], p["views"]) for p in hcm_top["pages"]] == [
        (1, "/b", 3),
        (2, "/a", 2),
        (3, "/c", 1),
        (4, "/late", 1),
    ]
    assert [(p["page"], p["views"]) for p in lon_top["pages"]] == [("/a", 1), ("/early", 1)]
    assert hcm_csv == "rank,page,views\r\n1,/b,3\r\n2,/a,2\r\n3,/c,1\r\n4,/late,1\r\n"
    assert (
        daily_csv == "day,views,visitors\r\n2025-03-09,1,1\r\n2025-03-10,1,1\r\n2025-03-11,1,1\r\n"
    )


async def test_the_cli_prints_the_same_reports(report_settings: Settings) -> None:
    await record_known_hits(report_settings)
    env = {
        **os.environ,
        "VIEWCOUNTER_REDIS_URL": report_settings.redis_url,
        "VIEWCOUNTER_DATABASE_URL": report_settings.database_url,
    }

    async def cli(*args: str) -> tuple[int, str, str]:
        return await run_cli("report", *args, env=env)

    rng = ("--from", "2025-03-05", "--to", "2025-03-09")
    table = await cli("top", "--site", HCM, *rng)
    as_csv = await cli("top", "--site", HCM, *rng, "--format", "csv", "--limit", "1")
    as_json = await cli(
        "daily", "--site", LON, "--from", "2025-03-09", "--to", "2025-03-10", "--format", "json"
    )
    bad_day = await cli("daily", "--site", HCM, "--from", "2025-02-30")
    unknown = await cli("top", "--site", "nosuchsite")
    assert table == (
        0,
        "rank  page   views\n"
        "   1  /b         3\n"
        "   2  /a         2\n"
        "   3  /c         1\n"
        "   4  /late      1\n",
        "",
    )
    assert as_csv[1] == "rank,page,views\r\n1,/b,3\r\n"
    assert [(d["day"], d["views"]) for d in json.loads(as_json[1])["days"]] == [
        ("2025-03-09", 2),
        ("2025-03-10", 1),
    ]
    assert bad_day[0] == 2 and "from: must be a date" in bad_day[2]
    assert unknown[0] == 2 and "site:" in unknown[2]


async def test_reports_need_a_token_and_name_the_bad_field(report_settings: Settings) -> None:
    async with running_api(report_settings) as api:
        await api.put(f"/v1/sites/{HCM}", json={"timezone": "Asia/Ho_Chi_Minh"}, headers=ADMIN)
        url = f"/v1/sites/{HCM}/reports/top"
        anonymous = await api.get(url)
        wrong = await api.get(url, headers={"authorization": "Bearer nope-nope-nope-nope"})
        with_admin = await api.get(url, headers=ADMIN)
        with_report = await api.get(url, headers={"authorization": f"Bearer {REPORT_TOKEN}"})
        # The report token opens reports only, not admin routes.
        admin_route = await api.get(
            f"/v1/sites/{HCM}", headers={"authorization": f"Bearer {REPORT_TOKEN}"}
        )
        refused = []
        for path, params in [
            ("top", {"from": "2025-13-01"}),
            ("top", {"to": "yesterday"}),
            ("top", {"from": "2025-03-10", "to": "2025-03-01"}),
            ("top", {"from": "2015-01-01", "to": "2025-01-01"}),
            ("top", {"limit": "0"}),
            ("top", {"limit": "1001"}),
            ("top", {"format": "xml"}),
            ("daily", {"page": "bad\u200bpage"}),
        ]:
            response = await api.get(
                f"/v1/sites/{HCM}/reports/{path}", params=params, headers=ADMIN
            )
            refused.append((response.status_code, response.json()["error"]["field"]))
        unknown = await api.get("/v1/sites/nosuchsite/reports/daily", headers=ADMIN)
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert with_admin.status_code == 200 and with_report.status_code == 200
    assert with_report.json()["pages"] == [] and with_report.json()["limit"] == 10
    assert admin_route.status_code == 401
    assert refused == [
        (422, "from"),
        (422, "to"),
        (422, "from"),
        (422, "from"),
        (422, "limit"),
        (422, "limit"),
        (422, "format"),
        (422, "page"),
    ]
    assert unknown.status_code == 404


async def test_report_views_and_the_read_only_role(report_settings: Settings) -> None:
    await record_known_hits(report_settings)
    conn = await asyncpg.connect(
        report_settings.database_url.replace("postgres@", "viewcounter_reports@")
    )
    try:
        who = await conn.fetchval("SELECT current_user")
        daily = await conn.fetch(
            "SELECT day::text, views FROM site_daily WHERE site = $1 ORDER BY day", HCM
        )
        top = await conn.fetch("SELECT page, views, rank FROM top_pages_7d WHERE site = $1", HCM)
        totals = await conn.fetchrow(
            "SELECT views, baseline, total FROM site_totals WHERE site = $1", HCM
        )
        page_rows = await conn.fetchval("SELECT count(*) FROM page_daily WHERE site = $1", HCM)
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("UPDATE site_views SET views = 0")
        for table in ("flush_batches", "baseline_outbox"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"SELECT * FROM {table}")
    finally:
        await conn.close()
    assert who == "viewcounter_reports"
    assert [tuple(r) for r in daily] == [
        ("2025-03-05", 3),
        ("2025-03-07", 3),
        ("2025-03-09", 1),
        ("2025-03-10", 1),
        ("2025-03-11", 1),
    ]
    assert top == []  # March 2025 is long past: nothing in the last 7 days
    assert tuple(totals) == (9, 0, 9)
    assert page_rows == 7


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


@pytest.mark.timeout(60)  # ~12 s: loads a year of 100k pages
async def test_report_queries_read_only_the_days_asked_for_on_a_year_of_100k_pages(
    database_url: str,
) -> None:
    """A year of a site with 100,000 pages, 1,500 of them viewed each day (547,500 daily
    rows) next to another site's year: the top-of-a-week query scans exactly that week's
    rows through the covering index, from the index alone; a page's days use the primary key."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(stack.BIG_AND_OTHER_SITES_SQL)
        await conn.execute(
            """
            INSERT INTO page_views (site, page, views)
                SELECT s, '/bai-viet/' || i, 0 FROM generate_series(0, 99999) i,
                       unnest(ARRAY['big', 'other']) s WHERE s = 'big' OR i < 20000;
            INSERT INTO page_views_daily (site, page, day, views)
                SELECT s, '/bai-viet/' || ((d * 1500 + j) % n),
                       date '2024-01-01' + d, 1 + (j % 50)
                FROM generate_series(0, 365) d, generate_series(0, 1499) j,
                     (VALUES ('big', 100000), ('other', 20000)) AS t (s, n)
                ORDER BY d, s, j;  -- in day order, as flushes append them
            INSERT INTO site_views_daily (site, day, views)
                SELECT site, day, sum(views) FROM page_views_daily GROUP BY site, day;
            """
        )
        await conn.execute("VACUUM ANALYZE page_views_daily")
        await conn.execute("VACUUM ANALYZE site_views_daily")
        in_week = await conn.fetchval(
            "SELECT count(*) FROM page_views_daily WHERE site = 'big' "
            "AND day BETWEEN '2024-06-01' AND '2024-06-07'"
        )
        table_pages = await conn.fetchval(
            "SELECT relpages FROM pg_class WHERE relname = 'page_views_daily'"
        )
        plans = {}
        for name, query, args in [
            ("top", db_reports.Q["report_top_pages"], ("big", "2024-06-01", "2024-06-07", 10)),
            ("site_daily", db_reports.Q["report_site_daily"], ("big", "2024-06-01", "2024-06-30")),
            (
                "page_daily",
                db_reports.Q["report_page_daily"],
                ("big", "/bai-viet/5", "2024-01-01", "2024-12-31"),
            ),
        ]:
            typed = [
                datetime.fromisoformat(a).date() if isinstance(a, str) and a[:2] == "20" else a
                for a in args
            ]
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", *typed)
            plans[name] = json.loads(raw)[0]["Plan"]
    finally:
        await conn.close()
    nodes = {name: _plan_nodes(plan) for name, plan in plans.items()}
    # site_views_daily holds one row per site and day: a planner may read 732 rows whole.
    seq = [
        (name, n.get("Relation Name"))
        for name, ns in nodes.items()
        for n in ns
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") != "site_views_daily"
    ]
    assert seq == [], seq
    # An index-only scan, or a bitmap scan of the same index (the heap is in day order, as
    # flushes write it): either way exactly the week's rows are read, and few pages.
    index = [n for n in nodes["top"] if n.get("Index Name") == "page_views_daily_site_day"]
    heap = [n for n in nodes["top"] if n.get("Relation Name") == "page_views_daily"]
    assert len(index) == 1 and index[0]["Actual Rows"] == in_week == 7 * 1500, plans["top"]
    assert index[0]["Node Type"] in ("Index Only Scan", "Bitmap Index Scan")
    assert all(n.get("Rows Removed by Filter", 0) == 0 for n in heap)
    assert all(n.get("Rows Removed by Index Recheck", 0) == 0 for n in heap)
    blocks = sum(n["Shared Hit Blocks"] + n["Shared Read Blocks"] for n in heap)
    assert blocks * 20 < table_pages, (blocks, table_pages)  # a week: under 5 % of a year
    page_daily = [n for n in nodes["page_daily"] if n.get("Relation Name") == "page_views_daily"]
    assert [n["Index Name"] for n in page_daily] == ["page_views_daily_pkey"]


async def test_reports_and_the_cli_read_the_reports_database_when_one_is_set(
    report_settings: Settings, pg_server: PostgresProcess
) -> None:
    """VIEWCOUNTER_REPORTS_DATABASE_URL: a copy of the database taken before three more
    views of /c were flushed stands for a replica that lags; reports (api and CLI) answer
    from it, the live counts from Redis, and without the setting reports read the main one."""
    await record_known_hits(report_settings)
    conn = await asyncpg.connect(report_settings.database_url)
    try:
        main_name = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    replica_url = await stack.create_database(pg_server, f"{main_name}_replica", main_name)
    clock = [at("2025-03-07 12:00:00")]
    async with live_counts(report_settings, clock) as live, flusher_for(report_settings) as f:
        for n in range(3):
            result = await live.hit(HCM, "/c", visitor=f"r{n}", ip="10.0.0.2", user_agent="x")
            assert result.outcome == "counted"
        await f.flush_once()
    rng = {"from": "2025-03-05", "to": "2025-03-09"}

    def ranking(body: Any) -> list[tuple[str, int]]:
        return [(p["page"], p["views"]) for p in body["pages"]]

    on_replica = report_settings.model_copy(update={"reports_database_url": replica_url})
    async with running_api(on_replica) as api:
        replica_top = await get(api, f"/v1/sites/{HCM}/reports/top", **rng)
        replica_totals = await get(api, f"/v1/sites/{HCM}/reports/totals")
    async with running_api(report_settings) as api:
        main_top = await get(api, f"/v1/sites/{HCM}/reports/top", **rng)
    env = {
        **os.environ,
        "VIEWCOUNTER_REDIS_URL": report_settings.redis_url,
        "VIEWCOUNTER_DATABASE_URL": report_settings.database_url,
    }
    cli_args = ("top", "--site", HCM, "--from", rng["from"], "--to", rng["to"], "--format", "csv")
    cli_replica = await run_cli(
        "report", *cli_args, env={**env, "VIEWCOUNTER_REPORTS_DATABASE_URL": replica_url}
    )
    cli_main = await run_cli("report", *cli_args, env=env)
    assert ranking(replica_top) == [("/b", 3), ("/a", 2), ("/c", 1), ("/late", 1)]
    assert ranking(main_top) == [("/c", 4), ("/b", 3), ("/a", 2), ("/late", 1)]
    # The Postgres parts from the replica; the live total from Redis, with the three views.
    assert (replica_totals["views"], replica_totals["live_views"]) == (9, 12)
    assert cli_replica[1] == "rank,page,views\r\n1,/b,3\r\n2,/a,2\r\n3,/c,1\r\n4,/late,1\r\n"
    assert cli_main[1] == "rank,page,views\r\n1,/c,4\r\n2,/b,3\r\n3,/a,2\r\n4,/late,1\r\n"
