"""The test stack: settings, databases from the migrated template, the api under uvicorn,
a flusher as its process builds it, and the constants the tests share."""


from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import uvicorn
from starlette.types import ASGIApp

from services.api.app import create_app, server_options
from services.api.ops_listener import create_ops_app
from services.cli.localpostgres import PostgresProcess
from services.cli.localservers import free_port
from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter import startup
from services.counting.live import LiveCounts
from services.db import audit as db_audit
from services.db import baselines as db_baselines
from services.db import ledger as db_ledger
from services.db import migrate
from services.db import pool as db_pool
from services.db import sites as db_sites
from services.flusher.worker import Flusher

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}  # the admin API's headers
TEST_AUTHOR = db_audit.Author("cli:test")  # who the audit log names for a test's own changes
TEMPLATE_DB = "vc_template"
SITE = "quan11"
SITE_TZ = "Asia/Ho_Chi_Minh"
# The two sites of the query-plan tests' year of data: 'big', and another beside it.
BIG_AND_OTHER_SITES_SQL = """
    INSERT INTO sites (site, timezone) VALUES ('big', 'Asia/Ho_Chi_Minh'), ('other', 'UTC');
    INSERT INTO site_views (site) VALUES ('big'), ('other');
"""
# httpx's own agent is on the crawler list: tests browse as a browser unless they say so.
BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)
_db_numbers = itertools.count()


async def create_database(server: PostgresProcess, name: str, template: str | None = None) -> str:
    """CREATE DATABASE `name` on `server` (a copy of `template` when given); its URL."""
    conn = await asyncpg.connect(server.url())
    try:
        copy = f" TEMPLATE {template}" if template else ""
        await conn.execute(f"CREATE DATABASE {name}{copy}")
    finally:
        await conn.close()
    return server.url(name)


async def create_migrated_template(server: PostgresProcess) -> None:
    """Create TEMPLATE_DB on `server` with every migration applied."""
    conn = await asyncpg.connect(await create_database(server, TEMPLATE_DB))
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


async def copy_template(server: PostgresProcess) -> str:
    """A new database copied from the migrated template; its URL."""
    return await create_database(server, f"t{next(_db_numbers)}", TEMPLATE_DB)


def pid_exists(pid: int) -> bool:
    """Whether a process with `pid` exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class FakeClock:
    """A clock the test moves (seconds since the epoch), for `create_app(settings, clock)`:
    rate limits count per clock minute, so a test moves to the next minute instead of
    sleeping, and never straddles one by accident."""

    def __init__(self, now: float | None = None) -> None:
        # The first second of the current minute: a whole minute ahead before it turns.
        self.now = now if now is not None else time.time() // 60 * 60

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` on."""
        self.now += seconds


def make_settings(redis_url: str, database_url: str, **overrides: object) -> Settings:
    """Settings for tests: short intervals, the test admin token."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "database_url": database_url,
        "admin_token": ADMIN_TOKEN,
        "flush_interval": 0.2,
        "redis_timeout": 2.0,
        "statement_timeout": 5.0,
        # Most tests send many hits from one client: dedupe and rate limits are tested on
        # their own (test_people.py).
        "dedupe_window": 0,
        "rate_limit": 0,
        "admin_rate_limit": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running_api(
    settings: Settings, app: ASGIApp | None = None, clock: Callable[[], float] = time.time
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (or `app`) under uvicorn on a free port, and a client for it; the app is
    built from `settings` and reads the time from `clock`."""
    port = free_port()
    config = uvicorn.Config(
        app if app is not None else create_app(settings, clock),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        **server_options(settings),  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30,
        limits=limits,
        headers={"user-agent": BROWSER_UA},
    ) as client:
        try:
            yield client
        finally:
            server.should_exit = True
            await task


@asynccontextmanager
async def running_ops(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The api's metrics listener app (/metrics, /readyz with its checks) on a free port of
    this process, as `viewcounter api` runs it beside the public port, and a client for it."""
    async with running_api(settings, app=create_ops_app(settings)) as client:
        yield client


async def register_site(client: httpx.AsyncClient, site: str = SITE, tz: str = SITE_TZ) -> None:
    """PUT the site through the admin route."""
    response = await client.put(
        f"/v1/sites/{site}",
        json={"timezone": tz},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code in (200, 201), response.text


@asynccontextmanager
async def api_with_site(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """running_api(settings) with SITE registered (in SITE_TZ) first."""
    async with running_api(settings) as client:
        await register_site(client)
        yield client


def flusher_on(
    stores: Clients, pool: db_pool.Pool, ledger: db_ledger.Ledger | None = None, **options: Any
) -> Flusher:
    """A Flusher on these clients and pool (with `ledger` instead of the pool's: a test's
    subclass), `options` as Flusher takes them (interval 1 s unless given)."""
    options.setdefault("interval_s", 1.0)
    ledger = db_ledger.Ledger(pool) if ledger is None else ledger
    return Flusher(stores.flush, stores.baselines, ledger, db_baselines.Baselines(pool), **options)


@asynccontextmanager
async def flusher_for(settings: Settings) -> AsyncIterator[Flusher]:
    """A Flusher with its own clients, as the flusher process builds it."""
    stores = Clients(
        counter_client.connect(settings.redis_url, max_connections=4, timeout_s=5),
        units=settings.shards,
        wait_replicas=settings.redis_wait_replicas,
    )
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    flusher = flusher_on(stores, pool, interval_s=settings.flush_interval)
    try:
        yield flusher
    finally:
        await flusher.release_leases()  # as a flusher that stops cleanly does
        await pool.close()
        await stores.aclose()


@asynccontextmanager
async def live_counts(settings: Settings, clock: list[float]) -> AsyncIterator[LiveCounts]:
    """The api's LiveCounts on real Redis and Postgres, with a clock the test sets."""
    stores = Clients(counter_client.connect(settings.redis_url, max_connections=4, timeout_s=5))
    await startup.register_scripts(stores.redis)
    pool = await db_pool.connect_pool(settings.database_url, statement_timeout_s=5)
    try:
        yield LiveCounts(stores.hits, db_sites.Sites(pool), clock=lambda: clock[0])
    finally:
        await pool.close()
        await stores.aclose()
