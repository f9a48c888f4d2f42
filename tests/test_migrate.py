"""Schema migrations: ordered, applied once, safe when several processes migrate at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from services.cli.localpostgres import PostgresProcess
from services.db import migrate
from tests.support.stack import create_database

REPO = Path(__file__).resolve().parent.parent


async def test_concurrent_migrators_apply_each_step_once(pg_server: PostgresProcess) -> None:
    url = await create_database(pg_server, "mig_concurrent")
    conns = [await asyncpg.connect(url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        for c in conns:
            await c.close()
    applied = sorted(v for result in results for v in result)
    assert applied == [m.version for m in migrate.migrations()]
    assert [r["version"] for r in rows] == applied


@pytest.mark.timeout(90)  # ~2 s; its commands are bounded at 60 s each with their output
async def test_cli_migrate_then_sites_add_is_idempotent(
    pg_server: PostgresProcess, redis_url: str
) -> None:
    url = await create_database(pg_server, "mig_cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWCOUNTER_")}
    env.update(VIEWCOUNTER_REDIS_URL=redis_url, VIEWCOUNTER_DATABASE_URL=url)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    first, second = cli("migrate"), cli("migrate")
    assert (first.returncode, second.returncode) == (0, 0)
    assert "up to date" in second.stdout
    added = cli("sites", "add", "quan11", "--timezone", "Asia/Ho_Chi_Minh")
    again = cli("sites", "add", "quan11", "--timezone", "Asia/Ho_Chi_Minh")
    assert (added.returncode, again.returncode) == (0, 0), added.stderr
    assert "created" in added.stdout and "updated" in again.stdout
    bad = cli("sites", "add", "Bad Site")
    assert bad.returncode == 2
    assert bad.stderr.startswith("viewcounter: site")
    bad_tz = cli("sites", "add", "ok", "--timezone", "Mars/Olympus")
    assert bad_tz.returncode == 2
