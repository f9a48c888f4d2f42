"""An upgrade under load: the previous release (tests/previous_release.txt, built from this
repository's history by tests/support/release.py) runs its api and flusher on a database it
migrated itself, with hits flowing and counts unflushed; the new release's migrations run while
hits arrive; the old processes are stopped (SIGTERM, or SIGKILL) and the new release's api and
flusher take over on the same Redis and Postgres. Every acknowledged hit lands in Postgres
exactly once, and the live counts polled all along never go backwards."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from services.cli.localpostgres import PostgresProcess
from services.cli.localservers import free_port
from services.config import Settings
from tests.support import chaos, release, stack
from tests.support.livecounts import Watcher
from tests.support.stack import SITE

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]
PAGES = 20
WATCHED = [f"page-{i}" for i in range(5)]  # the pages whose live counts are polled
_databases = iter(range(1_000_000))


@pytest.fixture(scope="session")
def previous_release() -> release.Release:
    """The previous release, built once (and cached across runs); under CI a commit missing
    from the clone fails the test, elsewhere it is skipped with the reason."""
    try:
        return release.build(release.previous_commit())
    except release.ReleaseMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc}: the upgrade test needs it")
        pytest.skip(str(exc))


@contextmanager
def old_process(
    built: release.Release, settings: Settings, log: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`viewcounter ARGS` of the previous release, in its own source tree and environment."""
    argv = [str(built.python), "-m", "services.cli", *args]
    with chaos.spawned(argv, chaos.process_env(settings), log, cwd=built.source) as proc:
        yield proc


def migrate(python: Path, cwd: Path, settings: Settings) -> str:
    """`viewcounter migrate` of one release; its output."""
    done = subprocess.run(
        [str(python), "-m", "services.cli", "migrate"],
        cwd=cwd,
        env=chaos.process_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def pending_keys(redis_url: str) -> int:
    """Pending and snapshot hashes in Redis: hits not yet in Postgres."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return len([k async for k in client.scan_iter(match="{vc:*}:[ps][en][na][dp]:*")])
    finally:
        await client.aclose()


async def ready(client: httpx.AsyncClient, port: int) -> bool:
    """Whether the api on `port` answers ready."""
    return await chaos.answers_ready(client, f"http://127.0.0.1:{port}/readyz")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
async def test_upgrade_under_load_moves_every_acknowledged_hit_once(
    previous_release: release.Release,
    pg_server: PostgresProcess,
    redis_url: str,
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    # A database the previous release migrated itself: the new release's migrations (if any)
    # run during the upgrade.
    name = f"upgrade{next(_databases)}_{os.getpid()}"
    database_url = await stack.create_database(pg_server, name)
    settings = stack.make_settings(redis_url, database_url, flush_interval=0.5)
    old_migrations = migrate(previous_release.python, previous_release.source, settings)
    old_port = free_port()
    old_api_args = ("api", "--workers", "1", "--port", str(old_port))
    old = previous_release
    with (
        old_process(old, settings, tmp_path / "old-api.log", *old_api_args) as old_api,
        old_process(old, settings, tmp_path / "old-flusher.log", "flusher") as old_flusher,
    ):
        async with (
            chaos.browser_client(old_port, timeout=10, connections=20, keepalive=20) as client,
            httpx.AsyncClient(timeout=5) as probe,
        ):
            await chaos.until(lambda: ready(probe, old_port), "the previous release's api")
            await stack.register_site(client)
            load = chaos.Load(client, SITE, pages=PAGES, seed=41)
            watcher = Watcher(client, SITE, WATCHED)
            with chaos.Sampler(database_url, [load]) as sampler:
                async with load.flowing(clients=6):
                    watcher.start()
                    await load.more_acked(300)
                    await chaos.wait_for_batches(database_url, 0)  # the old flusher at work
                    # The new release's migrations, while hits arrive at the old api.
                    new_migrations = await asyncio.to_thread(
                        migrate, Path(sys.executable), chaos.REPO, settings
                    )
                    await load.more_acked(200)
                    with chaos.api_process(settings, tmp_path / "new-api.log", workers=1) as (
                        new_api,
                        new_port,
                    ):
                        await chaos.until(lambda: ready(probe, new_port), "the new api")
                        unflushed = await pending_keys(redis_url)
                        # The old flusher goes first (its units are free once its lease
                        # lapses, 1 s here), then the old api; hits go to the new api from
                        # the moment the old one is signalled.
                        os.killpg(old_flusher.pid, stop_signal)
                        old_flusher_exit = await asyncio.to_thread(old_flusher.wait, 30)
                        acked_before_switch = load.acked_total
                        os.killpg(old_api.pid, stop_signal)
                        client.base_url = httpx.URL(f"http://127.0.0.1:{new_port}")
                        old_api_exit = await asyncio.to_thread(old_api.wait, 30)
                        await load.more_acked(200)
                        batches = await chaos.ledger_count(database_url)
                        with chaos.flusher_process(settings, tmp_path / "new-flusher.log") as new:
                            await load.more_acked(300)
                            # Stopped once it works: a process signalled while still importing dies
                            # by the signal (having taken nothing).
                            await chaos.wait_for_batches(database_url, batches)
                            await load.halt()
                            await watcher.finish()
                            assert await chaos.stop_gracefully(new) == 0
                        new_api_exit = await chaos.stop_gracefully(new_api, 40)
    result = await chaos.final_report(
        f"upgrade under load from {previous_release.commit[:7]}, old api and flusher "
        f"{stop_signal.name}",
        database_url,
        [load],
        sampler,
        notes=(
            f"migrations by the new release: {new_migrations!r}; {unflushed} pending/snapshot "
            f"hashes when the old flusher was stopped; {acked_before_switch} acknowledged "
            f"before the switch; {len(watcher.seen)} live-count polls, never backwards; old "
            f"exits: flusher {old_flusher_exit}, api {old_api_exit}; new api exit {new_api_exit}"
        ),
    )
    assert old_migrations.startswith("migrations applied: [1, "), old_migrations
    assert new_migrations.startswith("migrations applied: "), new_migrations
    assert unflushed > 0  # the old release left counts for the new one to move
    # (uvicorn ends by the signal it was stopped with; a flusher stopped by SIGTERM exits 0.)
    killed = -signal.SIGKILL
    if stop_signal == signal.SIGTERM:
        assert (old_flusher_exit, old_api_exit) == (0, -signal.SIGTERM)
    else:
        assert (old_flusher_exit, old_api_exit) == (killed, killed)
    assert len(watcher.seen) > 10
    assert not watcher.backwards(), watcher.backwards()[:3]
    result.assert_exact()
