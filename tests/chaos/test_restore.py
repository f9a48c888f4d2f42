"""Postgres restored from a pg_dump backup while Redis holds newer counts (docs/operations.md,
"Restoring Postgres from a backup"): the flusher is stopped, the dump is restored with
pg_restore in one transaction while hits keep flowing, the flusher starts again.

What the restore loses is exactly what batches committed between the dump and the restore had
added to Postgres; the test computes it in the same run (Postgres before the restore minus the
dump) and requires Postgres to end with every other acknowledged hit exactly once. The live
counts polled all along never go backwards, and at the end they exceed Postgres by exactly that
loss (Redis kept it). A site registered after the dump is registered again after the restore
(step 3 of the procedure): Postgres then holds its hits but those flushed before the restore."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.cli.localpostgres import PostgresProcess
from services.config import Settings
from tests.support import chaos
from tests.support.checks import assert_consistent, fetchval, totals
from tests.support.livecounts import Watcher
from tests.support.stack import SITE, register_site

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
PAGES = 20
LATE_SITE = "late"
LATE_HITS = 30


def pg_tool(server: PostgresProcess, tool: str, database_url: str, *args: str) -> None:
    """Run Postgres' `tool` (pg_dump, pg_restore) of the server's own install on the database."""
    name = database_url.rsplit("/", 1)[1]
    command = [
        str(server.bin_dir / tool),
        "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", name, *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{tool}: {done.stderr}"


async def late_hits(api: httpx.AsyncClient) -> int:
    """Send LATE_HITS hits to LATE_SITE, each acknowledged; how many."""
    for i in range(LATE_HITS):
        response = await api.post(f"/v1/sites/{LATE_SITE}/hits", json={"page": f"l{i % 3}"})
        assert response.status_code == 200 and response.json()["counted"], response.text
    return LATE_HITS


async def last_batch_hits(database_url: str) -> int:
    """Hits of the batch committed last."""
    hits = await fetchval(
        database_url, "SELECT hits FROM flush_batches ORDER BY applied_at DESC LIMIT 1"
    )
    assert isinstance(hits, int)
    return hits


@pytest.mark.parametrize("crash_after_commit", [False, True], ids=["stopped", "crashed"])
async def test_restoring_an_older_dump_loses_exactly_the_later_batches_and_nothing_goes_back(
    crash_after_commit: bool,
    api: httpx.AsyncClient,
    site: str,
    settings: Settings,
    pg_server: PostgresProcess,
    tmp_path: Path,
) -> None:
    url = settings.database_url
    dump = tmp_path / "viewcounter.dump"
    load = chaos.Load(api, site, pages=PAGES, seed=51)
    watcher = Watcher(api, SITE, [f"page-{i}" for i in range(PAGES)])
    with chaos.Sampler(url, [load]) as sampler:
        async with load.flowing(clients=4):
            watcher.start()
            with chaos.flusher_process(settings, tmp_path / "flusher1.log") as flusher:
                await load.more_acked(200)
                await chaos.wait_for_batches(url, 0)
                # The nightly backup, taken while hits flow and the flusher commits.
                await asyncio.to_thread(pg_tool, pg_server, "pg_dump", url, "-Fc", "-f", str(dump))
                dumped_batches = await chaos.ledger_count(url)
                # A site registered after the dump: Postgres will not know it after the restore.
                await register_site(api, LATE_SITE)
                late_acked = await late_hits(api)
                await load.more_acked(200)
                await chaos.wait_for_batches(url, await chaos.ledger_count(url))
                # The procedure: 1. stop the flushers.
                assert await chaos.stop_gracefully(flusher) == 0
            replayed = 0
            if crash_after_commit:
                # A flusher that died after a COMMIT, before deleting its snapshot: the dump
                # lacks that batch's ledger row, so it is applied again after the restore.
                with chaos.flusher_process(
                    settings, tmp_path / "crashing.log", crash_at="after_commit"
                ) as crashing:
                    assert await asyncio.to_thread(crashing.wait, 30) == -signal.SIGKILL
                replayed = await last_batch_hits(url)
            before = (await totals(url, site)).pages  # what Postgres held when it failed
            late_before = (await totals(url, LATE_SITE)).site_views
            later_batches = await chaos.ledger_count(url) - dumped_batches
            # 2. restore the dump, in one transaction, while hits keep coming.
            await load.more_acked(50)
            await asyncio.to_thread(
                pg_tool, pg_server, "pg_restore", url,
                "--clean", "--if-exists", "--single-transaction", str(dump),
            )  # fmt: skip
            restored = (await totals(url, site)).pages
            loss = Counter({p: before.get(p, 0) - restored.get(p, 0) for p in before})
            assert await fetchval(url, "SELECT count(*) FROM sites WHERE site = $1", LATE_SITE) == 0
            await load.more_acked(50)
            # 3. register again the sites created after the dump.
            await register_site(api, LATE_SITE)
            late_acked += await late_hits(api)
            # 3. start the flushers again.
            with chaos.flusher_process(settings, tmp_path / "flusher2.log") as flusher:
                await chaos.wait_for_batches(url, await chaos.ledger_count(url))
                await load.more_acked(200)
                await load.halt()
                assert await chaos.stop_gracefully(flusher) == 0
            await watcher.finish()
    final = await api.get(
        f"/v1/sites/{site}/counts", params=[("page", f"page-{i}") for i in range(PAGES)]
    )
    live = final.json()["pages"]
    restore_loss = sum(loss.values())
    result = await chaos.final_report(
        "Postgres restored from an older pg_dump, Redis kept, hits flowing ("
        + ("a flusher crashed after a COMMIT" if crash_after_commit else "flusher stopped")
        + ")",
        url,
        [load],
        sampler,
        notes=(
            f"lost = what the {later_batches} batches committed after the dump added "
            f"({restore_loss} hits), computed before the restore, less the {replayed} hits "
            f"of a batch whose snapshot a crash left in Redis; live counts still hold them; "
            f"{len(watcher.seen)} live-count polls, never backwards"
        ),
    )
    stored = (await totals(url, site)).pages
    assert later_batches > 0 and restore_loss > 0  # the dump was older than the failure
    assert all(n >= 0 for n in loss.values()), loss  # the dump holds less, never more
    assert load.unknown_total == 0
    # Postgres lost exactly what the later batches had added, and nothing else; no double.
    if crash_after_commit:
        # The batch left in Redis by the crash was applied again: not lost.
        assert replayed > 0 and result.lost == restore_loss - replayed
        assert all(result.lost_by_page.get(p, 0) <= n for p, n in loss.items())
    else:
        assert result.lost_by_page == {p: n for p, n in loss.items() if n > 0}
    assert result.doubled == 0
    # The site registered after the dump: Postgres lost what it held before the restore, and
    # holds every later hit once; its live total kept everything.
    late = await totals(url, LATE_SITE)
    assert_consistent(late)
    assert late_before > 0 and late.site_views == late_acked - late_before
    late_live = (await api.get(f"/v1/sites/{LATE_SITE}/counts")).json()["site_views"]
    assert late_live == late_acked
    # The live counts kept every acknowledged hit: ahead of Postgres by exactly the loss.
    assert {p: live[p] for p in live if live[p]} == dict(load.acked)
    assert {p: live[p] - stored.get(p, 0) for p in live} == {
        p: result.lost_by_page.get(p, 0) for p in live
    }
    assert len(watcher.seen) > 10
    assert not watcher.backwards(), watcher.backwards()[:3]
