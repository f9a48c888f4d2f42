"""The audit log: every admin action in Postgres with who, what and the request id, written in
the change's own transaction, read newest first in pages; the baseline trail of earlier
releases migrated into it with nothing lost."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from services.cli.localpostgres import PostgresProcess
from services.db import migrate
from tests.support.checks import fetch
from tests.support.cli import run_cli
from tests.support.stack import (
    ADMIN,
    SITE,
    create_database,
    make_settings,
    register_site,
    running_api,
)

OTHER = "quan1"


async def audit(client: httpx.AsyncClient, site: str = SITE, **params: object) -> httpx.Response:
    return await client.get(f"/v1/sites/{site}/audit", params=params, headers=ADMIN)


async def test_every_admin_action_is_logged_with_who_what_and_the_request_id(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url)
    async with running_api(settings) as client:
        await register_site(client, SITE)
        await register_site(client, OTHER)
        made = await client.post(
            f"/v1/sites/{SITE}/keys", json={"scope": "admin", "name": "editor"}, headers=ADMIN
        )
        key = made.json()
        as_key = {"authorization": f"Bearer {key['secret']}", "x-request-id": "req-update-1"}
        await client.put(f"/v1/sites/{SITE}", json={"dedupe_window": 60}, headers=as_key)
        await client.post(
            f"/v1/sites/{SITE}/pages",
            json={"pages": ["/a", {"page": "/b", "title": "Tin B"}]},
            headers=as_key,
        )
        await client.post(
            f"/v1/sites/{SITE}/import",
            content=b"page,views\n/a,5\n/c,7\n",
            headers={**ADMIN, "content-type": "text/csv"},
        )
        await client.put(
            f"/v1/sites/{SITE}/pages/baseline", json={"page": "/a", "baseline": 6}, headers=as_key
        )
        await client.put(f"/v1/sites/{SITE}/baseline", json={"baseline": 100}, headers=ADMIN)
        await client.delete(f"/v1/sites/{SITE}/keys/{key['id']}", headers=ADMIN)
        # Refused changes leave no entry: nothing half-applied, the log included.
        refused = await client.put(
            f"/v1/sites/{SITE}", json={"timezone": "Mars/Olympus"}, headers=ADMIN
        )
        log = (await audit(client)).json()
        others = (await audit(client, OTHER)).json()
    assert refused.status_code == 422
    entries = log["entries"]
    assert log["next_before"] is None
    assert [e["action"] for e in entries] == [
        "key.revoke",
        "baseline.set",
        "baseline.set",
        "import",
        "pages.register",
        "site.update",
        "key.create",
        "site.create",
    ]
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert {tuple(sorted(e)) for e in entries} == {
        ("action", "actor", "at", "detail", "id", "request_id", "site")
    }
    by_action = {e["action"]: e for e in reversed(entries)}  # the newest of each
    key_actor = f"key:{key['id']}:editor"
    assert [e["actor"] for e in entries] == [
        "operator",
        "operator",
        key_actor,
        "operator",
        key_actor,
        key_actor,
        "operator",
        "operator",
    ]
    update = by_action["site.update"]
    assert update["request_id"] == "req-update-1"
    assert update["detail"] == {"changes": {"dedupe_window": {"old": None, "new": 60}}}
    assert by_action["site.create"]["detail"]["settings"]["timezone"] == "Asia/Ho_Chi_Minh"
    assert by_action["key.create"]["detail"] == {
        "id": key["id"],
        "scope": "admin",
        "name": "editor",
        "expires_at": None,
    }
    assert by_action["key.revoke"]["detail"] == {
        "id": key["id"],
        "scope": "admin",
        "name": "editor",
    }
    pages = by_action["pages.register"]["detail"]
    assert (pages["registered"], pages["registered_pages"], pages["titles_set"]) == (
        2,
        ["/a", "/b"],
        1,
    )
    imported = by_action["import"]["detail"]
    assert imported["baselines"] == [
        {"page": "/a", "old": 0, "new": 5},
        {"page": "/c", "old": None, "new": 7},
    ]
    assert (imported["rows_accepted"], imported["pages_changed"]) == (2, 2)
    site_set, page_set = entries[1], entries[2]
    assert site_set["detail"]["site_baseline"] == {"old": 0, "new": 100}
    assert page_set["detail"]["baselines"] == [{"page": "/a", "old": 5, "new": 6}]
    assert all(e["request_id"] for e in entries)  # every api request has an id
    assert [e["action"] for e in others["entries"]] == ["site.create"]
    no_secret = str(log)
    assert key["secret"].removeprefix("vck_") not in no_secret


async def test_the_log_pages_newest_first(redis_url: str, database_url: str) -> None:
    settings = make_settings(redis_url, database_url)
    async with running_api(settings) as client:
        await register_site(client, SITE)
        for window in range(1, 6):
            await client.put(f"/v1/sites/{SITE}", json={"dedupe_window": window}, headers=ADMIN)
        first = (await audit(client, limit=2)).json()
        second = (await audit(client, limit=2, before=first["next_before"])).json()
        third = (await audit(client, limit=2, before=second["next_before"])).json()
        everything = (await audit(client)).json()
        bad = [await audit(client, limit=v) for v in ("0", "501", "x", "-1")]
        bad_before = await audit(client, before="abc")
        ghost = await audit(client, "ghost")
    pages = [first, second, third]
    ids = [e["id"] for page in pages for e in page["entries"]]
    assert ids == [e["id"] for e in everything["entries"]]
    assert [len(p["entries"]) for p in pages] == [2, 2, 2]
    assert third["next_before"] is None
    windows = [e["detail"]["changes"]["dedupe_window"]["new"] for e in everything["entries"][:5]]
    assert windows == [5, 4, 3, 2, 1]
    assert {(r.status_code, r.json()["error"]["field"]) for r in bad} == {(422, "limit")}
    assert (bad_before.status_code, bad_before.json()["error"]["field"]) == (422, "before")
    assert ghost.status_code == 404 and ghost.json()["error"]["code"] == "unknown_site"


async def test_the_command_line_is_logged_as_its_os_user(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWCOUNTER_")}
    env.update(VIEWCOUNTER_REDIS_URL=redis_url, VIEWCOUNTER_DATABASE_URL=database_url)
    csv = tmp_path / "legacy.csv"
    csv.write_text("page,views\n/a,5\n")
    added = await run_cli("sites", "add", SITE, "--timezone", "Asia/Ho_Chi_Minh", env=env)
    imported = await run_cli("import", SITE, str(csv), env=env)
    assert (added[0], imported[0]) == (0, 0), (added, imported)
    rows = await fetch(database_url, "SELECT actor, action, request_id FROM audit_log ORDER BY id")
    me = f"cli:{getpass.getuser()}"
    assert [tuple(r) for r in rows] == [(me, "site.create", None), (me, "import", None)]


async def test_the_baseline_trail_of_before_is_migrated_into_the_log(
    pg_server: PostgresProcess,
) -> None:
    url = await create_database(pg_server, "audit_migration")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for step in migrate.migrations():
            if step.version < 5:
                await conn.execute(step.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    step.version,
                    step.name,
                )
        await conn.execute(
            """
            INSERT INTO sites (site) VALUES ('quan11');
            INSERT INTO site_views (site) VALUES ('quan11');
            INSERT INTO baseline_changes (site, source, changed_by, changed_at, pages_changed,
                                          site_delta)
            VALUES ('quan11', 'import', 'cli lan', '2025-01-02 03:04:05+00', 2, 1000),
                   ('quan11', 'page', 'api 10.0.0.1 editor-an', '2025-01-03 00:00:00+00', 1, 0);
            INSERT INTO baseline_audit (change_id, site, page, old_baseline, new_baseline,
                                        changed_by, changed_at)
            SELECT c.change_id, 'quan11', a.page, a.old, a.new, c.changed_by, c.changed_at
            FROM baseline_changes c
            JOIN (VALUES ('cli lan', NULL, 0, 1000), ('cli lan', '/a', NULL, 5),
                         ('cli lan', '/b', NULL, 7),
                         ('api 10.0.0.1 editor-an', '/a', 5, 6)) AS a (by, page, old, new)
              ON a.by = c.changed_by;
            """
        )
        trail_before = await conn.fetch("SELECT * FROM baseline_audit ORDER BY change_id, page")
        assert await migrate.migrate(conn) == [
            m.version for m in migrate.migrations() if m.version >= 5
        ]
        entries = await conn.fetch(
            "SELECT at, site, actor, action, detail::text AS detail, request_id FROM audit_log"
            " ORDER BY id"
        )
        trail_after = await conn.fetch("SELECT * FROM baseline_audit ORDER BY change_id, page")
    finally:
        await conn.close()
    assert [tuple(r) for r in trail_after] == [
        tuple(r) for r in trail_before
    ]  # kept, readable as before
    assert [(e["site"], e["actor"], e["action"], e["request_id"]) for e in entries] == [
        ("quan11", "cli:lan", "import", None),
        ("quan11", "operator", "baseline.set", None),
    ]
    assert [e["at"].isoformat() for e in entries] == [
        "2025-01-02T03:04:05+00:00",
        "2025-01-03T00:00:00+00:00",
    ]
    first, second = (orjson.loads(e["detail"]) for e in entries)
    assert first == {
        "change_id": 1,
        "source": "import",
        "changed_by": "cli lan",
        "pages_changed": 2,
        "site_delta": 1000,
        "migrated_from": "baseline_changes",
        "baselines": [
            {"page": None, "old": 0, "new": 1000},
            {"page": "/a", "old": None, "new": 5},
            {"page": "/b", "old": None, "new": 7},
        ],
    }
    assert second["changed_by"] == "api 10.0.0.1 editor-an"
    assert second["baselines"] == [{"page": "/a", "old": 5, "new": 6}]


@pytest.mark.parametrize("kind", ["admin", "report"])
async def test_only_the_operator_and_the_sites_admin_keys_read_the_log(
    redis_url: str, database_url: str, kind: str
) -> None:
    settings = make_settings(redis_url, database_url)
    async with running_api(settings) as client:
        await register_site(client, SITE)
        made = (
            await client.post(f"/v1/sites/{SITE}/keys", json={"scope": kind}, headers=ADMIN)
        ).json()
        read = await client.get(
            f"/v1/sites/{SITE}/audit", headers={"authorization": f"Bearer {made['secret']}"}
        )
    assert read.status_code == (200 if kind == "admin" else 403)
