"""Faults with real processes: kill -9 the flusher, stop Postgres, kill Redis, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.config import Settings
from services.localservers import PostgresProcess, RedisProcess, free_port
from tests.checks import assert_consistent, totals
from tests.conftest import (
    SITE,
    copy_template,
    create_migrated_template,
    flusher_for,
    make_settings,
    register_site,
    running_api,
)

pytestmark = pytest.mark.chaos
REPO = Path(__file__).resolve().parent.parent


def flusher_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWCOUNTER_")}
    env.update(
        VIEWCOUNTER_REDIS_URL=settings.redis_url,
        VIEWCOUNTER_DATABASE_URL=settings.database_url,
        VIEWCOUNTER_FLUSH_INTERVAL=str(settings.flush_interval),
        # A killed flusher's sites are free again this soon (the default is 15 s).
        VIEWCOUNTER_FLUSH_LEASE="1",
        VIEWCOUNTER_METRICS_PORT=str(free_port()),
        VIEWCOUNTER_LOG_LEVEL="warning",
    )
    return env


@contextmanager
def flusher_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`viewcounter flusher` as its own process, killed at the end if still running."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "flusher"],
            cwd=REPO,
            env=flusher_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Load:
    """Clients sending hits until stopped; counts what was acknowledged and what is unknown."""

    def __init__(self, client: httpx.AsyncClient, site: str, pages: int, seed: int) -> None:
        self.client = client
        self.site = site
        self.pages = pages
        self.rng = random.Random(seed)
        self.acked: Counter[str] = Counter()
        self.unknown = 0
        self.stop = asyncio.Event()

    async def one(self, page: str) -> int | None:
        """Send one hit; the answered site total when acknowledged."""
        try:
            response = await self.client.post(f"/v1/sites/{self.site}/hits", json={"page": page})
        except httpx.HTTPError:
            self.unknown += 1
            return None
        if response.status_code == 200:
            self.acked[page] += 1
            return int(response.json()["site_views"])
        assert response.status_code == 503, response.text
        self.unknown += 1  # Redis may or may not have applied it before failing
        return None

    async def client_loop(self) -> None:
        while not self.stop.is_set():
            await self.one(f"page-{self.rng.randrange(self.pages)}")
            await asyncio.sleep(0)

    def run(self, clients: int) -> asyncio.Future[list[None]]:
        return asyncio.gather(*(self.client_loop() for _ in range(clients)))


async def flush_batches(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM flush_batches"))
    finally:
        await conn.close()


async def wait_for_batches(database_url: str, above: int, timeout_s: float = 20.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        count = await flush_batches(database_url)
        if count > above:
            return count
        await asyncio.sleep(0.02)
    raise AssertionError(f"no new batch committed within {timeout_s} s")


async def test_flusher_killed_20_times_while_hits_flow_loses_and_doubles_nothing(
    api: httpx.AsyncClient, site: str, settings: Settings, tmp_path: Path
) -> None:
    # Many distinct pages and a short interval keep the flusher busy inside its passes, so
    # the kills land in every step of the protocol, not only in the sleep between passes.
    settings = make_settings(settings.redis_url, settings.database_url, flush_interval=0.01)
    load = Load(api, site, pages=20_000, seed=11)
    running = load.run(clients=8)
    rng = random.Random(5)
    batches = 0
    kills = 0
    for _ in range(22):
        with flusher_process(settings, tmp_path / "flusher.log") as proc:
            batches = await wait_for_batches(settings.database_url, batches)
            await asyncio.sleep(rng.uniform(0, 0.15))  # land anywhere in the next passes
            proc.send_signal(signal.SIGKILL)
            kills += 1
    load.stop.set()
    await running
    assert kills >= 20
    with flusher_process(settings, tmp_path / "flusher.log") as proc:
        await wait_for_batches(settings.database_url, await flush_batches(settings.database_url))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0

    assert load.unknown == 0
    t = await totals(settings.database_url, site)
    assert_consistent(t)
    assert t.pages == dict(load.acked)


async def test_sigterm_flushes_what_is_pending_and_exits_0(
    api: httpx.AsyncClient, site: str, settings: Settings, tmp_path: Path
) -> None:
    settings = make_settings(settings.redis_url, settings.database_url, flush_interval=3600)
    load = Load(api, site, pages=5, seed=1)
    with flusher_process(settings, tmp_path / "flusher.log") as proc:
        await load.one("first")
        await wait_for_batches(settings.database_url, 0)  # the start-up pass
        for i in range(30):
            await load.one(f"page-{i % 5}")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    t = await totals(settings.database_url, site)
    assert_consistent(t)
    assert t.pages == dict(load.acked)
    assert sum(load.acked.values()) == 31


async def test_postgres_outage_keeps_hits_flowing_and_totals_exact(
    own_postgres: PostgresProcess, redis_url: str
) -> None:
    await create_migrated_template(own_postgres)
    database_url = await copy_template(own_postgres)
    settings = make_settings(redis_url, database_url, flush_interval=0.1, statement_timeout=2)
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register_site(client)
        stop = asyncio.Event()
        flushing = asyncio.create_task(flusher.run(stop))
        load = Load(client, SITE, pages=20, seed=2)
        running = load.run(clients=4)
        await wait_for_batches(database_url, 0)
        await asyncio.to_thread(own_postgres.kill)  # kill -9: committed work must survive
        before = sum(load.acked.values())
        await asyncio.sleep(3)
        during = sum(load.acked.values()) - before
        await asyncio.to_thread(own_postgres.restart)
        await asyncio.sleep(1)
        load.stop.set()
        await running
        stop.set()
        await flushing
        await flusher.flush_once()

    assert during > 0, "hits must be answered while Postgres is down"
    assert load.unknown == 0
    t = await totals(database_url, SITE)
    assert_consistent(t)
    assert t.pages == dict(load.acked)


async def test_redis_killed_with_aof_always_loses_nothing_and_never_goes_backwards(
    own_redis: Callable[..., RedisProcess], database_url: str
) -> None:
    server = own_redis(appendfsync="always")
    settings = make_settings(server.url, database_url, flush_interval=0.1, redis_timeout=0.5)
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register_site(client)
        stop = asyncio.Event()
        flushing = asyncio.create_task(flusher.run(stop))
        load = Load(client, SITE, pages=20, seed=3)
        running = load.run(clients=4)
        watcher = Load(client, SITE, pages=1, seed=4)  # one sequential reader of the total
        shown: list[int] = []
        for round_ in range(3):
            for _ in range(40):
                total = await watcher.one("watched")
                if total is not None:
                    shown.append(total)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.restart)
            assert round_ >= 0
        for _ in range(40):
            total = await watcher.one("watched")
            if total is not None:
                shown.append(total)
        load.stop.set()
        await running
        stop.set()
        await flushing
        await flusher.flush_once()
        live = (await client.get(f"/v1/sites/{SITE}/counts")).json()["site_views"]

    assert shown == sorted(shown), "a total shown to a page went backwards"
    acked = load.acked + watcher.acked
    t = await totals(database_url, SITE)
    assert_consistent(t)
    # appendfsync always: every acknowledged hit survives; a hit whose answer was lost in the
    # crash may or may not have been applied.
    assert (
        sum(acked.values()) <= t.site_views <= sum(acked.values()) + load.unknown + watcher.unknown
    )
    for page, n in acked.items():
        assert t.pages.get(page, 0) >= n
    assert live == t.site_views
