"""A Redis Cluster of 3 masters and 3 replicas (the same binaries) under load: a master killed
(SIGKILL) is replaced by its replica, and a master paused (SIGSTOP) for seconds, then resumed.
Flush snapshots wait for a replica (VIEWCOUNTER_REDIS_WAIT_REPLICAS=1), so a promoted replica
never brings back a snapshot already in Postgres: nothing is counted twice. Replication is
asynchronous, so a failover may lose the hits a master acknowledged in its last moments and
had not yet sent to its replica: only hits of the killed master's units, measured in the
chaos table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from services.cli.localredis import RedisCluster, RedisProcess
from services.config import CLUSTER_SHARDS, Settings
from services.counter import keys
from services.counter.calls import unit_of
from services.counter.errors import CounterUnavailable
from services.flusher.passes import FlushDeferred
from services.flusher.worker import Flusher
from tests.support import chaos
from tests.support.checks import totals
from tests.support.stack import ADMIN, flusher_for, make_settings, running_api

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]
SITES = ["alpha", "beta", "gamma"]
PAGES = 16
# A master that stops answering is replaced after this long (the default is 15 s).
NODE_TIMEOUT_MS = 2000
# The pause of the "node slow" scenario: several hit timeouts, no failover (the cluster's
# node timeout is raised above it meanwhile).
PAUSE_S = 4.0
PAUSE_NODE_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    # appendfsync always: what a node acknowledged is on its disk (and, replicated, on the
    # replica's); what a failover may lose is only what the replica had not received.
    servers = RedisCluster(
        tmp_path_factory.mktemp("replicated"),
        masters=3,
        replicas=1,
        appendfsync="always",
        node_timeout_ms=NODE_TIMEOUT_MS,
    )
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture
async def settings(replicated: RedisCluster, database_url: str) -> AsyncIterator[Settings]:
    client = ClusterClient.from_url(replicated.url)
    try:
        await client.flushall(target_nodes=ClusterClient.PRIMARIES)
        await client.script_flush()
    finally:
        await client.aclose()
    yield make_settings(
        replicated.url.replace("redis://", "redis+cluster://"),
        database_url,
        redis_timeout=1.0,
        flush_interval=0.1,
        redis_wait_replicas=1,
    )


async def pages_on(cluster: RedisCluster, node: RedisProcess) -> set[str]:
    """site/page keys (as the chaos report names them) whose unit lives on `node`."""
    client = ClusterClient.from_url(cluster.url)
    try:
        await client.initialize()
        found = set()
        for site in SITES:
            for n in range(PAGES):
                page = f"page-{n}"
                key = keys.site_key(unit_of(site, page, CLUSTER_SHARDS))
                holder = client.get_node_from_key(key)
                if holder is not None and holder.port == node.port:
                    found.add(f"{site}/{page}")
        return found
    finally:
        await client.aclose()


def role(node: RedisProcess) -> str:
    client = redis.Redis(port=node.port, socket_timeout=2, decode_responses=True)
    try:
        return str(client.execute_command("ROLE")[0])
    except redis.RedisError:
        return "down"
    finally:
        client.close()


def in_sync(node: RedisProcess) -> bool:
    client = redis.Redis(port=node.port, socket_timeout=2, decode_responses=True)
    try:
        info = client.info("replication")
    except redis.RedisError:
        return False
    finally:
        client.close()
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


def set_node_timeout(cluster: RedisCluster, timeout_ms: int) -> None:
    for node in cluster.nodes:
        client = redis.Redis(port=node.port, socket_timeout=2)
        try:
            client.config_set("cluster-node-timeout", timeout_ms)
        finally:
            client.close()


async def flush_everything(flusher: Flusher, cluster: RedisCluster) -> None:
    """Flush (as the flusher's loop would, retrying) until no work is left in Redis."""
    for _ in range(200):
        with contextlib.suppress(CounterUnavailable, FlushDeferred):
            await flusher.flush_once()
            if not await work_left(cluster):
                return
        await asyncio.sleep(0.1)
    raise AssertionError("work left in Redis after 200 flush passes")


async def work_left(cluster: RedisCluster) -> bool:
    client = ClusterClient.from_url(cluster.url, decode_responses=True)
    try:
        async for _ in client.scan_iter(match=keys.WORK_KEYS_PATTERN):
            return True
        return False
    finally:
        await client.aclose()


def acked_on(loads: list[chaos.Load], names: set[str]) -> int:
    return sum(n for load in loads for p, n in load.acked.items() if f"{load.site}/{p}" in names)


async def register(client: object) -> None:
    for site in SITES:
        response = await client.put(f"/v1/sites/{site}", json={}, headers=ADMIN)  # type: ignore[attr-defined]
        assert response.status_code == 201, response.text


async def test_a_master_killed_under_load_fails_over_to_its_replica_and_doubles_nothing(
    replicated: RedisCluster, settings: Settings, database_url: str
) -> None:
    victim = (await asyncio.to_thread(replicated.primaries))[0]
    on_victim = await pages_on(replicated, victim)
    assert on_victim
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register(client)
        loads = [chaos.Load(client, site, PAGES, seed=n) for n, site in enumerate(SITES)]
        stop = asyncio.Event()
        flushing = asyncio.create_task(flusher.run(stop))
        for load in loads:
            load.run(2)
        try:
            await chaos.until(lambda: sum(x.acked_total for x in loads) >= 600, "load")
            before = acked_on(loads, on_victim)
            await asyncio.to_thread(victim.kill)
            killed = time.monotonic()
            # Its replica takes over its slots; its units count again.
            await chaos.until(
                lambda: any(role(n) == "master" for n in replicated.nodes if n is not victim)
                and len([n for n in replicated.nodes if n.pid and role(n) == "master"]) == 3,
                "a replica to be promoted",
            )
            promoted_s = time.monotonic() - killed
            after_kill = acked_on(loads, on_victim)
            await chaos.until(lambda: acked_on(loads, on_victim) >= after_kill + 100,
                              "hits on the promoted replica")  # fmt: skip
            # The old master comes back as the new master's replica.
            await asyncio.to_thread(victim.start)
            await chaos.until(lambda: in_sync(victim), "the old master to follow its replica")
            total = sum(x.acked_total for x in loads)
            await chaos.until(lambda: sum(x.acked_total for x in loads) >= total + 300, "load")
        finally:
            for load in loads:
                await load.halt()
            stop.set()
            await flushing
        await flush_everything(flusher, replicated)

    result = await chaos.final_report(
        "Redis Cluster master kill -9, replica promoted", database_url, loads,
        notes=(
            f"3 masters + 3 replicas, AOF always, snapshots wait for 1 replica; promoted "
            f"after {promoted_s:.1f} s (node timeout {NODE_TIMEOUT_MS} ms); "
            f"{len(on_victim)} of {len(SITES) * PAGES} pages on the killed master, "
            f"{before} hits acknowledged there before the kill"
        ),
    )  # fmt: skip
    # Nothing counted twice: no snapshot already in Postgres came back with the replica.
    assert result.doubled == 0, result.doubled_by_page
    # What a failover may lose: only hits of the killed master's units (acknowledged, not
    # yet replicated), never more than it acknowledged.
    assert set(result.lost_by_page) <= on_victim, result.lost_by_page
    assert result.lost <= before


async def test_a_master_paused_for_seconds_loses_and_doubles_nothing(
    replicated: RedisCluster, settings: Settings, database_url: str
) -> None:
    victim = (await asyncio.to_thread(replicated.primaries))[0]
    on_victim = await pages_on(replicated, victim)
    assert on_victim and victim.pid is not None
    await asyncio.to_thread(set_node_timeout, replicated, PAUSE_NODE_TIMEOUT_MS)
    try:
        async with running_api(settings) as client, flusher_for(settings) as flusher:
            await register(client)
            loads = [chaos.Load(client, site, PAGES, seed=10 + n) for n, site in enumerate(SITES)]
            stop = asyncio.Event()
            flushing = asyncio.create_task(flusher.run(stop))
            for load in loads:
                load.run(2)
            try:
                await chaos.until(lambda: sum(x.acked_total for x in loads) >= 600, "load")
                os.kill(victim.pid, signal.SIGSTOP)
                paused = time.monotonic()
                try:
                    on_victim_then = acked_on(loads, on_victim)
                    elsewhere = sum(x.acked_total for x in loads) - on_victim_then
                    await chaos.until(lambda: time.monotonic() - paused >= PAUSE_S, "the pause")
                    during = sum(x.acked_total for x in loads) - acked_on(loads, on_victim)
                    refused = sum(x.refused for x in loads)
                finally:
                    os.kill(victim.pid, signal.SIGCONT)
                pause_s = time.monotonic() - paused
                total = sum(x.acked_total for x in loads)
                await chaos.until(lambda: sum(x.acked_total for x in loads) >= total + 300, "load")
            finally:
                for load in loads:
                    await load.halt()
                stop.set()
                await flushing
            await flush_everything(flusher, replicated)
    finally:
        await asyncio.to_thread(set_node_timeout, replicated, NODE_TIMEOUT_MS)
    assert role(victim) == "master"  # slow, not failed over
    result = await chaos.final_report(
        f"Redis Cluster master SIGSTOP {pause_s:.1f} s (node slow)", database_url, loads,
        notes=(
            f"3 masters + 3 replicas; {len(on_victim)} of {len(SITES) * PAGES} pages on the "
            f"paused master; {during - elsewhere} hits acknowledged on the other masters "
            f"meanwhile, {refused} answered 503"
        ),
    )  # fmt: skip
    result.assert_exact()
    # The other masters' pages kept counting while one master was paused.
    assert during > elsewhere


async def test_a_snapshot_waits_for_a_replica_on_its_own_connection(
    replicated: RedisCluster, settings: Settings, database_url: str
) -> None:
    # WAIT counts the replicas that have the writes of its own connection: sent anywhere
    # else it would answer at once. With every replica paused, no snapshot is confirmed, so
    # nothing reaches Postgres; resumed, the same snapshot goes through, exactly once.
    replicas = [n for n in replicated.nodes if role(n) == "slave"]
    assert len(replicas) == 3
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register(client)
        # The flusher's client learns the cluster's layout now (from any node, one of them
        # maybe a replica about to be paused).
        await flush_everything(flusher, replicated)
        for n in range(30):
            response = await client.post(f"/v1/sites/{SITES[0]}/hits", json={"page": f"p{n}"})
            assert response.json()["counted"], response.text
        for node in replicas:
            assert node.pid is not None
            os.kill(node.pid, signal.SIGSTOP)
        try:
            with pytest.raises(FlushDeferred):
                await flusher.flush_once()
            assert await chaos.ledger_count(database_url) == 0
        finally:
            for node in replicas:
                assert node.pid is not None
                os.kill(node.pid, signal.SIGCONT)
        await flush_everything(flusher, replicated)
    stored = await totals(database_url, SITES[0])
    assert stored.pages == {f"p{n}": 1 for n in range(30)}
