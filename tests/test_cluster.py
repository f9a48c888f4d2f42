"""Redis Cluster: a local 3-master cluster from the same binaries; hits, reads and flushes stay
exact across nodes, with each site split over 16 units (VIEWCOUNTER_SHARDS' Cluster default),
also when a node is killed and restarted under load."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster as ClusterClient

from services.api.public_models import CountsOut, StatsOut
from services.cli.localredis import RedisCluster
from services.config import CLUSTER_SHARDS
from services.counter import keys
from services.counter.calls import unit_of
from services.counter.errors import CounterUnavailable
from services.flusher import metrics as flusher_metrics
from tests.support import chaos
from tests.support.checks import assert_consistent, totals
from tests.support.stack import ADMIN, flusher_for, make_settings, running_api

SITES = [f"site{n}" for n in range(12)]
# A three-node cluster starts per module and one test kills a node: slowest 5-7 s here.
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    # appendfsync always: a killed node keeps every write it acknowledged.
    servers = RedisCluster(tmp_path_factory.mktemp("cluster"), masters=3, appendfsync="always")
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture
async def cluster_url(cluster: RedisCluster) -> AsyncIterator[str]:
    url = cluster.url.replace("redis://", "redis+cluster://")
    client = ClusterClient.from_url(cluster.url)
    try:
        await client.flushall(target_nodes=ClusterClient.PRIMARIES)
        await client.script_flush()  # SCRIPT FLUSH goes to every primary
    finally:
        await client.aclose()
    yield url


async def nodes_of(cluster: RedisCluster, units: list[str]) -> dict[str, str]:
    """unit -> the node holding its keys."""
    client = ClusterClient.from_url(cluster.url)
    try:
        await client.initialize()
        nodes = {unit: client.get_node_from_key(keys.site_key(unit)) for unit in units}
        return {unit: node.name for unit, node in nodes.items() if node is not None}
    finally:
        await client.aclose()


def unit(site: str, page: str) -> str:
    return unit_of(site, page, CLUSTER_SHARDS)


async def register(client: httpx.AsyncClient) -> None:
    for site in SITES:
        response = await client.put(f"/v1/sites/{site}", json={}, headers=ADMIN)
        assert response.status_code == 201, response.text


async def test_hits_reads_and_flushes_are_exact_across_nodes(
    cluster: RedisCluster, cluster_url: str, database_url: str
) -> None:
    one_site = await nodes_of(cluster, keys.units(SITES[0], CLUSTER_SHARDS))
    assert len(set(one_site.values())) == 3  # one site spreads over every node
    settings = make_settings(cluster_url, database_url, dedupe_window=1800)
    assert settings.shards == CLUSTER_SHARDS
    sent: dict[str, Counter[str]] = {site: Counter() for site in SITES}
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register(client)

        async def visit(site: str, reader: int) -> None:
            for page in ("a", "b", "a", f"p{reader % 3}"):
                response = await client.post(
                    f"/v1/sites/{site}/hits", json={"page": page, "visitor": f"r{reader}"}
                )
                assert response.status_code == 200, response.text
                if response.json()["counted"]:
                    sent[site][page] += 1

        await asyncio.gather(*(visit(site, r) for site in SITES for r in range(5)))
        report = await flusher.flush_once()
        live = {
            site: (
                await client.get(f"/v1/sites/{site}/counts", params={"page": ["a", "b", "p0"]})
            ).json()
            for site in SITES
        }
    # Every unit with hits, in one batch per node (its units are all on that node).
    hit_units = {unit(site, p) for site in SITES for p in sent[site]}
    assert report.units == len(hit_units)
    assert report.batches == len(set((await nodes_of(cluster, sorted(hit_units))).values()))
    for site in SITES:
        # Each reader counts "a" once (the repeat is a duplicate), "b" once, one p-page once.
        assert sent[site]["a"] == 5 and sent[site]["b"] == 5
        stored = await totals(database_url, site)
        assert_consistent(stored)
        assert stored.pages == dict(sent[site])
        assert live[site]["site_views"] == stored.site_views == 15
        assert live[site]["site_visitors"] == 5


@pytest.mark.chaos
async def test_a_node_killed_and_restarted_under_load_loses_and_doubles_nothing(
    cluster: RedisCluster, cluster_url: str, database_url: str, tmp_path: Path
) -> None:
    pages = [f"p{n}" for n in range(8)]
    placement = await nodes_of(cluster, [unit(s, p) for s in SITES for p in pages])
    victim = cluster.nodes[0]
    on_victim = {u for u, node in placement.items() if node.endswith(f":{victim.port}")}
    elsewhere = [(s, p) for s in SITES for p in pages if unit(s, p) not in on_victim]
    assert on_victim and elsewhere
    settings = make_settings(cluster_url, database_url, redis_timeout=1.0, flush_interval=0.1)
    acked: dict[str, Counter[str]] = {site: Counter() for site in SITES}
    unknown: Counter[str] = Counter()
    unknown_pages: dict[str, Counter[str]] = {site: Counter() for site in SITES}
    stop = asyncio.Event()
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register(client)
        flushing = asyncio.create_task(flusher.run(stop))

        async def load(site: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                page = pages[n % len(pages)]
                try:
                    response = await client.post(f"/v1/sites/{site}/hits", json={"page": page})
                except httpx.HTTPError:
                    unknown[site] += 1
                    unknown_pages[site][page] += 1
                    continue
                if response.status_code == 200:
                    acked[site][page] += 1
                else:
                    assert response.status_code == 503, response.text
                    unknown[site] += 1  # may or may not have been applied
                    unknown_pages[site][page] += 1
                    await asyncio.sleep(0.05)

        loads = [asyncio.create_task(load(site)) for site in SITES]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(0.5)
        during = sum(acked[s][p] for s, p in elsewhere)
        await asyncio.sleep(0.5)
        after_outage = sum(acked[s][p] for s, p in elsewhere)
        await asyncio.to_thread(victim.start)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*loads)
        await flushing
        # Connections to the restarted node fail once each before new ones are made: flush
        # (as the flusher's loop would, retrying) until nothing is left.
        for _ in range(100):
            with contextlib.suppress(CounterUnavailable):
                await flusher.flush_once()
                if not [k async for k in _work_keys(cluster)]:
                    break
            await asyncio.sleep(0.1)

    stored_pages: Counter[str] = Counter()
    for site in SITES:
        stored = await totals(database_url, site)
        assert_consistent(stored)
        stored_pages.update({f"{site}/{p}": n for p, n in stored.pages.items()})
        done = sum(acked[site].values())
        print(
            f"{site}: acknowledged {done}, in Postgres {stored.site_views}, "
            f"unknown chaos.outcome {unknown[site]}"
        )
        # Nothing acknowledged is lost; nothing is counted twice (at most the hits whose
        # answer was lost may have been applied).
        assert done <= stored.site_views <= done + unknown[site]
        for page, n in acked[site].items():
            assert stored.pages.get(page, 0) >= n
    result = chaos.record(
        chaos.outcome(
            "Redis Cluster node kill -9 and restart",
            {f"{site}/{p}": n for site in SITES for p, n in acked[site].items()},
            {f"{site}/{p}": n for site in SITES for p, n in unknown_pages[site].items()},
            stored_pages,
            notes=(
                f"3 masters, AOF always, {CLUSTER_SHARDS} units a site; {len(on_victim)} of "
                f"{len(placement)} units hit on the node"
            ),
        )
    )
    result.assert_exact()
    # Pages whose units live on the other nodes kept counting while the victim was down.
    assert after_outage > during


@contextlib.asynccontextmanager
async def others_serve_while_a_node_is_down(cluster: RedisCluster) -> AsyncIterator[None]:
    """`cluster-require-full-coverage no` on every node (docs/scaling.md): without replicas,
    a master marked failed would otherwise stop the whole Cluster from serving."""
    clients = [aioredis.Redis(port=node.port) for node in cluster.nodes]
    try:
        for client in clients:
            await client.config_set("cluster-require-full-coverage", "no")
        yield
    finally:
        for client in clients:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await client.config_set("cluster-require-full-coverage", "yes")
            await client.aclose()


@pytest.mark.chaos
async def test_a_node_down_delays_only_its_own_units_and_the_others_reach_postgres(
    cluster: RedisCluster, cluster_url: str, database_url: str
) -> None:
    pages = [f"p{n}" for n in range(8)]
    placement = await nodes_of(cluster, [unit(s, p) for s in SITES for p in pages])
    victim = cluster.nodes[1]
    victim_name = f"127.0.0.1:{victim.port}"
    on_victim = {u for u, node in placement.items() if node == victim_name}
    assert on_victim and len(on_victim) < len(placement)
    settings = make_settings(cluster_url, database_url, redis_timeout=1.0)
    acked: Counter[tuple[str, str]] = Counter()
    unknown: Counter[tuple[str, str]] = Counter()

    async def send(client: httpx.AsyncClient) -> None:
        for site in SITES:
            for page in pages:
                try:
                    response = await client.post(f"/v1/sites/{site}/hits", json={"page": page})
                except httpx.HTTPError:
                    unknown[(site, page)] += 1
                    continue
                if response.status_code == 200:
                    acked[(site, page)] += 1
                else:
                    assert response.status_code == 503, response.text
                    unknown[(site, page)] += 1

    async def stored() -> Counter[tuple[str, str]]:
        found: Counter[tuple[str, str]] = Counter()
        for site in SITES:
            t = await totals(database_url, site)
            assert_consistent(t)
            found.update({(site, p): n for p, n in t.pages.items()})
        return found

    async with (
        others_serve_while_a_node_is_down(cluster),
        running_api(settings) as client,
        flusher_for(settings) as flusher,
    ):
        await register(client)
        await flusher.flush_once()
        await send(client)  # every node up
        await asyncio.to_thread(victim.kill)
        await send(client)  # the victim's pages answer 503; the others count
        during = await flusher.flush_once()  # not a failed pass: the others' units move
        while_down = await stored()
        lags = flusher_metrics.node_lags()
        await asyncio.to_thread(victim.start)
        for _ in range(100):  # connections to the restarted node fail once each
            with contextlib.suppress(CounterUnavailable):
                await flusher.flush_once()
                if not [k async for k in _work_keys(cluster)]:
                    break
            await asyncio.sleep(0.1)
        after = await stored()
    elsewhere = {key: n for key, n in acked.items() if unit(*key) not in on_victim}
    # While the victim was down, every acknowledged hit of the other nodes' units was in
    # Postgres, and none of the victim's.
    assert during.hits == sum(elsewhere.values()) > 0
    assert {key: n for key, n in while_down.items() if unit(*key) not in on_victim} == elsewhere
    assert not [key for key in while_down if unit(*key) in on_victim]
    # Its lag grew alone: its last complete pass is older than the others'.
    others = [f"127.0.0.1:{node.port}" for node in cluster.nodes if node is not victim]
    assert lags[victim_name] > max(lags[node] for node in others)
    # Back up: exact totals (a hit refused while its node was down was not applied).
    for key in set(acked) | set(after):
        assert acked[key] <= after[key] <= acked[key] + unknown[key], key
    assert sum(after.values()) == sum(acked.values())


async def _work_keys(cluster: RedisCluster) -> AsyncIterator[str]:
    client = ClusterClient.from_url(cluster.url, decode_responses=True)
    try:
        async for key in client.scan_iter(match=keys.WORK_KEYS_PATTERN):
            yield key
    finally:
        await client.aclose()




async def test_a_split_site_with_a_node_down_answers_partial_counts_that_never_go_back(
    cluster: RedisCluster, cluster_url: str, database_url: str
) -> None:
    site = SITES[0]
    pages = [f"p{n}" for n in range(24)]
    placement = await nodes_of(cluster, [unit(site, p) for p in pages])
    victim = cluster.nodes[1]
    away = [p for p in pages if placement[unit(site, p)].endswith(f":{victim.port}")]
    here = [p for p in pages if p not in away]
    assert away and here
    settings = make_settings(cluster_url, database_url, redis_timeout=1.0)
    async with running_api(settings) as client, flusher_for(settings) as flusher:
        await register(client)
        for n, page in enumerate(pages):
            for _ in range(1 + n % 3):
                response = await client.post(f"/v1/sites/{site}/hits", json={"page": page})
                assert response.json()["counted"], response.text
        await flusher.flush_once()
        flushed = await totals(database_url, site)
        for page in pages:  # one more each, not flushed
            await client.post(f"/v1/sites/{site}/hits", json={"page": page})
        live = {p: n + 1 for p, n in flushed.pages.items()}
        full = (await client.get(f"/v1/sites/{site}/counts", params={"page": pages})).json()
        assert "partial" not in full
        assert full["pages"] == live and full["site_views"] == sum(live.values())
        stats = (await client.get(f"/v1/sites/{site}/stats")).json()
        assert "partial" not in stats and stats["total"] == full["site_views"]

        await asyncio.to_thread(victim.stop)
        try:
            # The process that read the site before: the node's parts as it last read them.
            shown: list[int] = []
            for _ in range(3):
                response = await client.get(f"/v1/sites/{site}/counts", params={"page": pages})
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["partial"] is True
                assert body["pages"] == live
                shown.append(body["site_views"])
            assert shown == [full["site_views"]] * 3
            # Pages on the other nodes keep counting; the node's own pages answer 503.
            gone = await client.post(f"/v1/sites/{site}/hits", json={"page": away[0]})
            assert gone.status_code == 503, gone.text
            counted = await client.post(f"/v1/sites/{site}/hits", json={"page": here[0]})
            assert counted.status_code == 200 and counted.json()["counted"], counted.text
            assert counted.json()["site_views"] == full["site_views"] + 1
            live[here[0]] += 1
            body = (await client.get(f"/v1/sites/{site}/counts", params={"page": pages})).json()
            assert body["partial"] is True and body["pages"] == live
            assert body["site_views"] == full["site_views"] + 1
            response = await client.get(f"/v1/sites/{site}/stats")
            assert response.status_code == 200, response.text
            block = response.json()
            StatsOut.model_validate(block)  # the documented shape, `partial` included
            assert block["partial"] is True and block["total"] == full["site_views"] + 1
            assert block["today"] >= stats["today"] + 1  # never below the last answer
            badge = await client.get(f"/v1/sites/{site}/badge.svg")
            assert badge.status_code == 200, badge.text

            # A process that never read the site: the node's parts as flushed to Postgres.
            async with running_api(settings) as fresh:
                response = await fresh.get(f"/v1/sites/{site}/counts", params={"page": pages})
                assert response.status_code == 200, response.text
                body = response.json()
                CountsOut.model_validate(body)
                assert body["partial"] is True
                expected = {p: live[p] if p in here else flushed.pages[p] for p in pages}
                assert body["pages"] == expected
                assert body["site_views"] == sum(expected.values())
                again = (
                    await fresh.get(f"/v1/sites/{site}/counts", params={"page": pages[:1]})
                ).json()
                assert again["site_views"] == body["site_views"]
        finally:
            await asyncio.to_thread(victim.start)
        await _cluster_ok_again(cluster)
        for _ in range(50):  # connections to the restarted node fail once each
            response = await client.get(f"/v1/sites/{site}/counts", params={"page": pages})
            if response.status_code == 200 and "partial" not in response.json():
                break
            await asyncio.sleep(0.1)
        body = response.json()
        assert "partial" not in body, body
        assert body["pages"] == live and body["site_views"] == sum(live.values())


async def _cluster_ok_again(cluster: RedisCluster) -> None:
    async def ok() -> bool:
        client = ClusterClient.from_url(cluster.url, decode_responses=True)
        try:
            info = await client.cluster_info()
            return info.get("cluster_state") == "ok"
        except Exception:
            return False
        finally:
            await client.aclose()

    await chaos.until(ok, "the cluster to be ok again")
