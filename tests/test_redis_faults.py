"""Redis misbehaving under the hit path: slow replies, cancelled callers, flushed scripts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import redis.asyncio as aioredis

from services.cli.localredis import RedisProcess
from services.cli.localservers import free_port
from services.clients import Clients
from services.config import Settings
from services.counter import client as counter_client
from services.counter.outcomes import HitRequest, PageRule
from tests.support.checks import views
from tests.support.stack import SITE, api_with_site, make_settings, register_site, running_api


class PausableProxy:
    """A TCP proxy in front of Redis whose replies can be held back (a slow or stuck Redis)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.replies_flowing = asyncio.Event()
        self.replies_flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> PausableProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, gated=False)),
            asyncio.create_task(self._pump(up_reader, writer, gated=True)),
        ]
        self._tasks.update(pumps)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pumps, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, gated: bool
    ) -> None:
        while data := await reader.read(65536):
            if gated:
                await self.replies_flowing.wait()
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def proxied_api(
    redis_port: int, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, PausableProxy]]:
    async with PausableProxy(redis_port) as proxy:
        settings = make_settings(
            f"redis://127.0.0.1:{proxy.port}/0", database_url, redis_timeout=0.5
        )
        async with api_with_site(settings) as client:
            yield client, proxy


async def hit(client: httpx.AsyncClient, page: str = "a") -> httpx.Response:
    return await client.post(f"/v1/sites/{SITE}/hits", json={"page": page})


async def test_a_reply_late_past_the_timeout_is_503_and_never_read_as_another_answer(
    settings: Settings,
) -> None:
    port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    async with proxied_api(port, settings.database_url) as (client, proxy):
        assert (await hit(client)).json()["page_views"] == 1
        proxy.replies_flowing.clear()  # Redis applies the hit, its reply is stuck
        stuck = await hit(client)
        assert stuck.status_code == 503
        assert stuck.json()["error"]["code"] == "redis_unavailable"
        proxy.replies_flowing.set()
        # Redis is known unreachable for a moment (groupcommit.PROBE_INTERVAL_S): a hit is
        # refused at once, never sent, until one probes and gets through.
        first = await hit(client)
        while first.status_code == 503:
            await asyncio.sleep(0.05)
            first = await hit(client)
        answers = [first.json()] + [(await hit(client)).json() for _ in range(2)]
    # The stuck hit was applied once and never retried; no later request got its stale reply.
    assert [a["page_views"] for a in answers] == [3, 4, 5]
    assert [a["site_views"] for a in answers] == [3, 4, 5]


def request(page: str) -> HitRequest:
    """A hit with dedupe and rate limit off."""
    return HitRequest(
        SITE, page, "2026-01-01", page, 0, "client", 0, 0, PageRule.any_page(), "visitor"
    )


async def test_cancelled_callers_leave_no_reply_behind(settings: Settings) -> None:
    async with running_api(settings) as client:
        await register_site(client)
    stores = Clients(counter_client.connect(settings.redis_url, max_connections=4, timeout_s=2))
    store = stores.hits
    try:
        await store.hit(request("warm"))  # loaded by register_site above
        tasks = [asyncio.create_task(store.hit(request(f"p{i % 7}"))) for i in range(200)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        answered = [t.result() for t in tasks if not t.cancelled()]
        following = await store.hit(request("after"))
        counts = await store.counts(SITE, "2026-01-01", [f"p{i}" for i in range(7)])
    finally:
        await stores.aclose()
    assert all(r is not None for r in answered)
    assert counts is not None
    # A hit whose caller was cancelled after it was queued is still counted (once): the
    # answer is lost, not the hit. Nothing is off by one afterwards.
    assert sum(counts.pages.values()) == 200
    assert following is not None
    assert following.site_views == 1 + 200 + 1
    assert counts.site_views == following.site_views


async def test_hits_survive_a_script_flush(
    api: httpx.AsyncClient, site: str, settings: Settings
) -> None:
    assert (await hit(api)).json()["page_views"] == 1
    client = aioredis.Redis.from_url(settings.redis_url)
    await client.script_flush()
    await client.aclose()
    assert (await hit(api)).json()["page_views"] == 2
    counts = await api.get(f"/v1/sites/{site}/counts", params={"page": "a"})
    assert counts.json()["pages"] == {"a": 2}


async def test_a_full_redis_answers_503_and_applies_nothing(
    own_redis: Callable[..., RedisProcess], database_url: str
) -> None:
    server = own_redis(appendonly=False)
    settings = make_settings(server.url, database_url)
    admin = aioredis.Redis.from_url(server.url)
    try:
        async with api_with_site(settings) as client:
            assert (await hit(client)).json()["page_views"] == 1
            used = int((await admin.info("memory"))["used_memory"])
            await admin.config_set("maxmemory", str(used // 2))  # noeviction: writes refused
            full = await hit(client, "b")
            assert full.status_code == 503
            assert full.json()["error"]["code"] == "redis_unavailable"
            await admin.config_set("maxmemory", "0")
            counts = await client.get(f"/v1/sites/{SITE}/counts", params={"page": ["a", "b"]})
    finally:
        await admin.aclose()
    assert views(counts.json()) == {"site": SITE, "site_views": 1, "pages": {"a": 1, "b": 0}}
