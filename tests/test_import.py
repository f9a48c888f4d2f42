"""Legacy counts carried over as baselines: CSV import and single baselines, idempotent,
row-by-row validation, the audit trail, and the live totals moving by exactly the change —
also under concurrent hits and flushes, for sites Redis has not loaded, and after a crash
between the Postgres commit and the Redis update."""

from __future__ import annotations

import asyncio
import gc
import os
import pty
import re
import sys
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter.flushstore import FlushStore
from services.counting import baselines
from services.db import baselines as db_baselines
from services.db import pool as db_pool
from tests.support.checks import assert_consistent, fetch, totals
from tests.support.cli import run_cli
from tests.support.csvbodies import MALFORMED_HEAD, MALFORMED_HEAD_REJECTED, MALFORMED_TAIL
from tests.support.stack import (
    ADMIN,
    SITE,
    TEST_AUTHOR,
    flusher_for,
    flusher_on,
    make_settings,
    running_api,
)

LEGACY_TOTAL = 37_409_357
LEGACY_CSV = (
    "page,views\n"
    "/tin-tuc/phat-huy-vai-tro-123,563\n"
    "tin-tức/phát-huy-vai-trò-124,1200\n"
    "/gioi-thieu,75000\n"
).encode()


async def import_csv(
    client: httpx.AsyncClient, body: bytes, status: int = 200, **params: object
) -> dict[str, object]:
    response = await client.post(
        f"/v1/sites/{SITE}/import",
        content=body,
        params=params,
        headers={**ADMIN, "content-type": "text/csv"},
    )
    assert response.status_code == status, response.text
    result: dict[str, object] = response.json()
    return result


async def hit(client: httpx.AsyncClient, page: str) -> dict[str, object]:
    response = await client.post(f"/v1/sites/{SITE}/hits", json={"page": page})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert body["counted"] is True, body
    return body


async def live(client: httpx.AsyncClient, *pages: str) -> tuple[int, dict[str, int]]:
    response = await client.get(f"/v1/sites/{SITE}/counts", params={"page": list(pages)})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["site_views"], body["pages"]


async def stored(database_url: str) -> tuple[int, dict[str, int]]:
    """Postgres' views + baseline of the site and of each page."""
    conn = await asyncpg.connect(database_url)
    try:
        site_total = await conn.fetchval(
            "SELECT views + baseline FROM site_views WHERE site = $1", SITE
        )
        pages = {
            r["page"]: r["total"]
            for r in await conn.fetch(
                "SELECT page, views + baseline AS total FROM page_views WHERE site = $1", SITE
            )
        }
    finally:
        await conn.close()
    return site_total, pages


async def pending_hits(redis_url: str) -> tuple[int, dict[str, int]]:
    """Hits counted in Redis and not yet in Postgres (pending shards and snapshots)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    site_total = 0
    pages: dict[str, int] = {}
    try:
        async for key in client.scan_iter(match=f"{{vc:{SITE}}}:[ps][en][na][dp]:*"):
            for field, value in (await client.hgetall(key)).items():
                page = field[10:]
                site_total += int(value)
                pages[page] = pages.get(page, 0) + int(value)
    finally:
        await client.aclose()
    return site_total, pages


async def test_import_sets_baselines_once_and_the_footer_shows_them(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    await hit(api, "/tin-tuc/phat-huy-vai-tro-123")  # the site is loaded in Redis now
    async with flusher_for(settings) as flusher:
        await flusher.flush_once()  # and the page is in Postgres
    first = await import_csv(api, LEGACY_CSV, site_total=str(LEGACY_TOTAL), by="editor-an")
    second = await import_csv(api, LEGACY_CSV, site_total=str(LEGACY_TOTAL), by="editor-an")
    site_views, pages = await live(
        api, "/tin-tuc/phat-huy-vai-tro-123", "tin-tức/phát-huy-vai-trò-124", "/gioi-thieu"
    )
    audit = await fetch(
        settings.database_url,
        "SELECT page, old_baseline, new_baseline, changed_by FROM baseline_audit "
        "WHERE site = $1 ORDER BY page NULLS FIRST",
        SITE,
    )
    assert first["rows_read"] == 3 and first["rows_accepted"] == 3
    assert first["pages_changed"] == 3 and first["pages_new"] == 2
    assert first["site_baseline"] == {"old": 0, "new": LEGACY_TOTAL}
    assert first["rejected_count"] == 0 and first["live_pending"] == 0
    assert second["change_id"] is None and second["pages_changed"] == 0
    assert second["pages_unchanged"] == 3
    assert second["site_baseline"] == {"old": LEGACY_TOTAL, "new": LEGACY_TOTAL}
    assert site_views == LEGACY_TOTAL + 1
    assert pages == {
        "/tin-tuc/phat-huy-vai-tro-123": 564,
        "tin-tức/phát-huy-vai-trò-124": 1200,
        "/gioi-thieu": 75000,
    }
    assert [(r["page"], r["old_baseline"], r["new_baseline"]) for r in audit] == [
        (None, 0, LEGACY_TOTAL),
        ("/gioi-thieu", None, 75000),
        ("/tin-tuc/phat-huy-vai-tro-123", 0, 563),
        ("tin-tức/phát-huy-vai-trò-124", None, 1200),
    ]
    assert {r["changed_by"] for r in audit} == {"api 127.0.0.1 editor-an"}
    # A next hit of an imported page starts from its baseline.
    assert (await hit(api, "/gioi-thieu"))["page_views"] == 75001


async def test_a_malformed_csv_rejects_the_bad_rows_only(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    # line 12 is /a again; 13 the too-large count, 14 the too-long line
    body = MALFORMED_HEAD + b"/a,12\r\n" + MALFORMED_TAIL
    report = await import_csv(api, body)
    rejected = [(r["line"], r["field"]) for r in report["rejected"]]  # type: ignore[index, union-attr]
    rows = await fetch(
        settings.database_url,
        "SELECT page, baseline FROM page_views WHERE site = $1 ORDER BY page",
        SITE,
    )
    assert rejected == [
        *MALFORMED_HEAD_REJECTED,
        (12, "page"),
        (13, "views"),
        (14, "line"),
    ]
    assert report["rejected_count"] == 10
    assert report["rows_accepted"] == 3
    assert [(r["page"], r["baseline"]) for r in rows] == [
        ("/a", 10),
        ("/h, with comma", 11),
        ("/k", 3),
    ]


async def test_a_file_without_the_header_is_refused_whole(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    for body in (b"/a,10\n/b,20\n", b"", b"url,count\n/a,1\n"):
        response = await api.post(
            f"/v1/sites/{SITE}/import",
            content=body,
            headers={**ADMIN, "content-type": "text/csv"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "file"
    refused = [
        ({"site_total": "-1"}, "site_total"),
        ({"site_total": "1e6"}, "site_total"),
        ({"by": "x" * 101}, "by"),
    ]
    for params, field in refused:
        response = await api.post(
            f"/v1/sites/{SITE}/import",
            content=b"page,views\n/a,1\n",
            params=params,
            headers={**ADMIN, "content-type": "text/csv"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
    wrong_type = await api.post(
        f"/v1/sites/{SITE}/import",
        content=b"page,views\n/a,1\n",
        headers={**ADMIN, "content-type": "application/json"},
    )
    unknown = await api.post(
        "/v1/sites/nosuchsite/import",
        content=b"page,views\n/a,1\n",
        headers={**ADMIN, "content-type": "text/csv"},
    )
    anonymous = await api.post(f"/v1/sites/{SITE}/import", content=b"page,views\n/a,1\n")
    assert wrong_type.status_code == 415
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_site"
    assert anonymous.status_code == 401
    changes = await fetch(settings.database_url, "SELECT * FROM baseline_changes")
    pages = await fetch(settings.database_url, "SELECT * FROM page_views")
    assert changes == [] and pages == []


async def test_one_page_baseline_with_slashes_in_its_id(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    url = f"/v1/sites/{SITE}/pages/baseline"
    page = "/tin-tuc/2025/03/ra-quan"
    set_it = await api.put(url, json={"page": page, "baseline": 500}, headers=ADMIN)
    again = await api.put(url, json={"page": page, "baseline": 500}, headers=ADMIN)
    lower = await api.put(url, json={"page": page, "baseline": 450}, headers=ADMIN)
    site_baseline = await api.put(
        f"/v1/sites/{SITE}/baseline", json={"baseline": 1000}, headers=ADMIN
    )
    site_views, pages = await live(api, page)
    bad = [
        ({"page": page, "baseline": -1}, "baseline"),
        ({"page": page, "baseline": "5"}, "baseline"),
        ({"page": page, "baseline": True}, "baseline"),
        ({"page": "", "baseline": 5}, "page"),
        ({"page": "a\u200bb", "baseline": 5}, "page"),
        ({"page": page, "baseline": 5, "extra": 1}, "extra"),
        ({"baseline": 5}, "page"),
    ]
    for body, field in bad:
        response = await api.put(url, json=body, headers=ADMIN)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["field"] == field
    not_json = await api.put(url, content=b"{", headers=ADMIN)
    audit = await fetch(
        settings.database_url,
        "SELECT page, old_baseline, new_baseline FROM baseline_audit ORDER BY change_id",
    )
    assert set_it.status_code == 200 and set_it.json()["changed"] is True
    assert again.json()["changed"] is False
    assert lower.json()["changed"] is True
    assert site_baseline.json()["changed"] is True
    assert not_json.status_code == 400
    assert site_views == 1000 and pages == {page: 450}
    assert [tuple(r) for r in audit] == [(page, None, 500), (page, 500, 450), (None, 0, 1000)]


async def test_imports_respect_the_sites_page_bound(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    put = await api.put(f"/v1/sites/{SITE}", json={"max_pages": 3}, headers=ADMIN)
    assert put.status_code == 200
    await hit(api, "/old")
    report = await import_csv(api, b"page,views\n/old,5\n/n1,1\n/n2,2\n/n3,3\n/n4,4\n")
    one_more = await api.put(
        f"/v1/sites/{SITE}/pages/baseline", json={"page": "/n5", "baseline": 1}, headers=ADMIN
    )
    rows = await fetch(settings.database_url, "SELECT page FROM page_views ORDER BY page")
    assert [(r["line"], r["field"]) for r in report["rejected"]] == [(5, "page"), (6, "page")]  # type: ignore[index, union-attr]
    assert [r["page"] for r in rows] == ["/n1", "/n2", "/old"]
    assert one_more.status_code == 422 and one_more.json()["error"]["code"] == "page_limit"


async def test_footer_is_views_plus_baseline_after_imports_under_concurrent_hits_and_flushes(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    pages = [f"/p{i}" for i in range(20)]
    await hit(api, pages[0])
    hits_sent = 1
    stop = asyncio.Event()

    async def hitter(offset: int) -> int:
        n = 0
        while not stop.is_set():
            await hit(api, pages[(offset + n) % len(pages)])
            n += 1
        return n

    async def flushing() -> None:
        async with flusher_for(settings) as flusher:
            while not stop.is_set():
                await flusher.flush_once()
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(hitter(i)) for i in range(8)]
    flush_task = asyncio.create_task(flushing())
    values = [0, 100, 7, 100]
    for round_no, value in enumerate(values):
        body = "page,views\n" + "".join(f"{p},{value + i}\n" for i, p in enumerate(pages))
        body += "/only-imported,1\n"
        await import_csv(api, body.encode(), site_total=str(1000 * (round_no + 1)))
    again = await import_csv(api, body.encode(), site_total=str(1000 * len(values)))
    stop.set()
    hits_sent += sum(await asyncio.gather(*tasks))
    await flush_task
    site_live, pages_live = await live(api, *pages, "/only-imported")
    pg_site, pg_pages = await stored(settings.database_url)
    pend_site, pend_pages = await pending_hits(settings.redis_url)
    t = await totals(settings.database_url, SITE)
    assert again["change_id"] is None
    # Pages known only from an import have views 0 and no daily rows.
    assert_consistent(replace(t, pages={p: v for p, v in t.pages.items() if v}))
    assert t.site_views + pend_site == hits_sent  # every hit counted once
    assert site_live == pg_site + pend_site == hits_sent + 1000 * len(values)
    assert pages_live == {p: pg_pages[p] + pend_pages.get(p, 0) for p in pages_live}
    assert pages_live["/only-imported"] == 1
    assert sum(pages_live.values()) == hits_sent + sum(100 + i for i in range(20)) + 1


async def test_a_site_not_in_redis_gets_the_baseline_with_its_next_load(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    await hit(api, "/a")
    async with flusher_for(settings) as flusher:
        await flusher.flush_once()
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.flushall()  # Redis lost the site
        report = await import_csv(api, b"page,views\n/a,41\n/b,5\n", site_total="1000")
        outbox = await fetch(settings.database_url, "SELECT * FROM baseline_outbox")
        assert await client.exists(f"{{vc:{SITE}}}:site") == 0  # the import did not load it
    finally:
        await client.aclose()
    site_views, pages = await live(api, "/a", "/b")
    assert report["pages_changed"] == 2 and outbox == []
    assert site_views == 1001 and pages == {"/a": 42, "/b": 5}


async def test_a_crash_between_commit_and_redis_is_caught_up_by_the_next_import(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    await hit(api, "/a")
    async with stores_and_pool(settings) as (stores, pool):
        await postgres_half_only(stores.flush, pool)  # as if the process died right after COMMIT
        lagging = await live(api, "/a", "/b")
        importer = baselines.Importer(
            db_baselines.Baselines(pool), stores.baselines, default_max_pages=0
        )
        # Applying a chunk twice (a retry after a timeout, two settlers) changes nothing.
        chunks = [c async for c in db_baselines.Baselines(pool).outbox(SITE)]
        first = await stores.baselines.apply_baseline(
            SITE, chunks[0].generation, chunks[0].change_id, 0, chunks[0].site_delta, []
        )
        twice = await stores.baselines.apply_baseline(
            SITE, chunks[0].generation, chunks[0].change_id, 0, chunks[0].site_delta, []
        )
        stale = await stores.baselines.apply_baseline(SITE, "another-generation", 10**9, 0, 5, [])
        # Re-running the same import changes nothing in Postgres and settles the rest.
        rerun = await importer.import_csv(
            SITE,
            _once(b"page,views\n/a,10\n/b,20\n"),
            site_total=500,
            changed_by="test",
            author=TEST_AUTHOR,
        )
    caught_up = await live(api, "/a", "/b")
    outbox = await fetch(settings.database_url, "SELECT * FROM baseline_outbox")
    assert lagging == (1, {"/a": 1, "/b": 0})
    assert (first, twice, stale) == (1, 2, 0)
    assert rerun.result.change_id is None and rerun.live_pending == 0
    assert caught_up == (501, {"/a": 11, "/b": 20}) and outbox == []


async def test_a_crash_between_commit_and_redis_is_caught_up_by_the_flusher(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    await hit(api, "/a")
    async with stores_and_pool(settings) as (stores, pool):
        await postgres_half_only(
            stores.flush, pool
        )  # as if the api died after COMMIT; no re-import
        lagging = await live(api, "/a", "/b")
        flusher = flusher_on(stores, pool)
        await flusher.flush_once()
        await flusher.flush_once()  # nothing queued any more: changes nothing
        await flusher.release_leases()
    caught_up = await live(api, "/a", "/b")
    outbox = await fetch(settings.database_url, "SELECT * FROM baseline_outbox")
    assert lagging == (1, {"/a": 1, "/b": 0})
    assert caught_up == (501, {"/a": 11, "/b": 20}) and outbox == []


@asynccontextmanager
async def stores_and_pool(settings: Settings) -> AsyncIterator[tuple[Clients, asyncpg.Pool]]:
    """Redis stores and a Postgres pool of the test's own, beside the api's."""
    stores = Clients(counter_client.connect(settings.redis_url, max_connections=2, timeout_s=5))
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    try:
        yield stores, pool
    finally:
        await pool.close()
        await stores.aclose()


async def postgres_half_only(store: FlushStore, pool: asyncpg.Pool) -> None:
    """The Postgres half of importing /a=10, /b=20 and a site total of 500: committed, with its
    Redis deltas queued in the outbox and not applied."""
    rows = baselines.csv_rows(_once(b"page,views\n/a,10\n/b,20\n"), baselines.Rejections(), [0])

    async def generation() -> str | None:
        return await store.generation(SITE)

    await db_baselines.Baselines(pool).apply(
        db_baselines.BaselineChange(
            SITE, site_total=500, source="import", changed_by="test", author=TEST_AUTHOR
        ),
        rows,
        default_max_pages=0,
        generation=generation,
        report_rows=10,
    )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _generated_csv(rows: int, chunk_rows: int = 5000) -> AsyncIterator[bytes]:
    yield b"page,views\n"
    for start in range(0, rows, chunk_rows):
        end = min(start + chunk_rows, rows)
        yield "".join(f"/bai-viet/{i},{i % 997}\n" for i in range(start, end)).encode()


@pytest.mark.timeout(60)  # 14-19 s: 220,000 rows imported under tracemalloc
async def test_import_memory_does_not_grow_with_the_file(redis_url: str, database_url: str) -> None:
    """Peak Python memory of a streamed import of 20,000 and of 200,000 rows: about the same
    (buffers, one chunk, the bounded lists), far below the rows' own size (they live in
    Postgres)."""
    settings = make_settings(redis_url, database_url, statement_timeout=60.0)
    async with running_api(settings) as client:
        response = await client.put(f"/v1/sites/{SITE}", json={"timezone": "UTC"}, headers=ADMIN)
        assert response.status_code == 201
    stores = Clients(counter_client.connect(settings.redis_url, max_connections=2, timeout_s=5))
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=60)
    peaks = []
    # The api's create_app() raises the collector's thresholds for the whole process; with
    # the defaults, garbage waiting for a collection does not blur the measurement.
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        importer = baselines.Importer(
            db_baselines.Baselines(pool), stores.baselines, default_max_pages=0
        )
        for rows in (20_000, 200_000):
            gc.collect()
            tracemalloc.start()
            report = await importer.import_csv(
                SITE, _generated_csv(rows), site_total=None, changed_by="test", author=TEST_AUTHOR
            )
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            assert report.result.rows_accepted == rows
    finally:
        gc.set_threshold(*thresholds)
        await pool.close()
        await stores.aclose()
    # 200,000 rows held as Python tuples would take about 30 MB, their CSV text 7 MB.
    assert peaks[1] < peaks[0] + 4_000_000, peaks
    assert peaks[1] < 8_000_000, peaks


async def test_cli_import_twice_changes_nothing_the_second_time(
    api: httpx.AsyncClient, site: str, settings: Settings, tmp_path: Path
) -> None:
    csv_file = tmp_path / "legacy.csv"
    csv_file.write_bytes(LEGACY_CSV + b"/bad,x\n")
    env = {
        **os.environ,
        "VIEWCOUNTER_REDIS_URL": settings.redis_url,
        "VIEWCOUNTER_DATABASE_URL": settings.database_url,
    }
    outputs = []
    for _ in range(2):
        code, out, err = await run_cli(
            "import", SITE, str(csv_file), "--site-total", str(LEGACY_TOTAL), "--by", "ops", env=env
        )
        assert code == 0, err
        outputs.append((out, err))
    site_views, _ = await live(api)
    assert "3 pages changed (3 new)" in outputs[0][0] and "change 1" in outputs[0][0]
    assert "0 pages changed" in outputs[1][0] and "nothing changed" in outputs[1][0]
    # stderr is not a terminal here: the rejected rows, and no progress.
    rejected = "  line 5: views: must be a whole number of views (digits only)\n"
    assert [err for _, err in outputs] == [rejected, rejected]
    assert site_views == LEGACY_TOTAL


def _read_terminal(fd: int) -> bytes:
    """All a pseudo-terminal's other end wrote, until the last writer closed it."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: no writer left
            return data
        if not chunk:
            return data
        data += chunk


async def test_cli_import_on_a_terminal_shows_rows_and_rows_per_second(
    api: httpx.AsyncClient, site: str, settings: Settings, tmp_path: Path
) -> None:
    rows = 30_000
    csv_file = tmp_path / "big.csv"
    csv_file.write_text("page,views\n" + "".join(f"/bai-viet/{i},{i}\n" for i in range(rows)))
    env = {
        k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TTY_INTERACTIVE", "TERM")
    } | {
        "VIEWCOUNTER_REDIS_URL": settings.redis_url,
        "VIEWCOUNTER_DATABASE_URL": settings.database_url,
        "TERM": "xterm-256color",
        "COLUMNS": "160",
    }
    controller, terminal = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "import", SITE, str(csv_file),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=terminal,
        )  # fmt: skip
        os.close(terminal)
        shown, (out, _) = await asyncio.gather(
            asyncio.to_thread(_read_terminal, controller), proc.communicate()
        )
    finally:
        os.close(controller)
    assert proc.returncode == 0, shown.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode())  # colours, cursor moves
    assert "importing big.csv" in text
    assert f"{rows:,} rows" in text and "rows/s" in text
    assert "applying to Postgres and Redis" in text
    # The report itself is on stdout, as without a terminal.
    assert f"{rows} rows read, {rows} accepted" in out.decode()
    _, pages = await live(api, "/bai-viet/7")
    assert pages == {"/bai-viet/7": 7}
