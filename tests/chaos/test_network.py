"""Network faults between the services, on test hosts made of network namespaces (no Docker):
Redis, Postgres, the api and the flusher each run in a namespace of their own, linked by veth
pairs (tests/support/netlab.py), and a link is partitioned (both ways, or only its replies),
or made slow and lossy, while hits flow. Every row: nothing acknowledged lost, nothing doubled.

The test process reaches the api, Redis and Postgres only through relays on its own loopback
(tests/support/relay.py); the faults are on the links between the services themselves.
"""

from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from services.cli.localpostgres import PostgresProcess
from services.cli.localredis import RedisProcess
from services.cli.localservers import free_port
from services.config import Settings
from tests.support import chaos, netlab, stack
from tests.support.relay import Relay
from tests.support.stack import SITE, make_settings, register_site

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

# The api's Redis timeout: short, so a partition shows as 503s soon.
REDIS_TIMEOUT_S = 0.5
# A slow link: added to each round trip (the client's direction), and the packets lost.
LATENCY_S = 0.2
LOSS = 0.1
# 503s to see before, and then while, checking that nothing is acknowledged (api–Redis).
REFUSED_FIRST = 8
REFUSED_MORE = 24
# ... for at least this long: several of the api's probes (one each 0.5 s) meet the fault.
UNHEARD_MIN_S = 3.0
# A slow link carries this many hits and batches before it is restored.
SLOW_HITS = 150
SLOW_BATCHES = 2
CLIENTS = 4


@dataclass(frozen=True)
class Scenario:
    fault: str  # "partition", "one-way" (requests arrive, replies are lost) or "slow"
    link: str  # a key of netlab.LINKS

    @property
    def title(self) -> str:
        link = netlab.LINKS[self.link]
        if self.fault == "slow":
            what = f"+{LATENCY_S * 1000:.0f} ms and {LOSS:.0%} packet loss"
        elif self.fault == "partition":
            what = "partitioned"
        else:
            what = "one-way partition (requests arrive, replies lost)"
        return f"network: {link.name} {what} (netns)"


SCENARIOS = [
    Scenario("partition", "api-redis"),
    Scenario("partition", "flusher-redis"),
    Scenario("partition", "flusher-pg"),
    Scenario("slow", "api-redis"),
    Scenario("slow", "flusher-redis"),
    Scenario("slow", "flusher-pg"),
    Scenario("one-way", "api-redis"),
    Scenario("one-way", "flusher-redis"),
    Scenario("one-way", "flusher-pg"),
]


@dataclass
class Net:
    """The lab and its two servers (reached from the test on 127.0.0.1:their port)."""

    lab: netlab.Lab
    redis: RedisProcess
    pg: PostgresProcess


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """Namespaces for redis, pg, api and flusher, with Redis and Postgres running in theirs;
    always torn down, and what a crashed earlier run left is removed first."""
    netlab.require()
    netlab.remove_stale()
    lab = netlab.Lab()
    lab.build()
    relays: list[Relay] = []
    servers: list[RedisProcess | PostgresProcess] = []
    try:
        data = tmp_path_factory.mktemp("net")
        # Each server's port is free on our 127.0.0.1, where a relay leads to the server in
        # its namespace on the same port (anything is free there): its URL and readiness
        # check work unchanged.
        ports = {host: free_port() for host in ("redis", "pg")}
        for host, port in ports.items():
            target = (netlab.SERVICE_ADDRESSES[host], port)
            relays.append(Relay(target, target_ns=lab.ns(host), port=port).start())
        redis_server = RedisProcess(
            data / "redis", ports["redis"], listen=netlab.SERVICE_ADDRESSES["redis"],
            command_prefix=lab.prefix("redis"),
        )  # fmt: skip
        pg_server = PostgresProcess(
            data / "pgdata", ports["pg"], fsync=False, listen=netlab.SERVICE_ADDRESSES["pg"],
            command_prefix=lab.prefix("pg"),
        )  # fmt: skip
        for server in (redis_server, pg_server):
            servers.append(server)
            server.start()
        yield Net(lab, redis_server, pg_server)
    finally:
        for server in reversed(servers):
            server.kill()
        for relay in relays:
            relay.close()
        lab.destroy()


@pytest.fixture(scope="module")
async def net_template(net: Net) -> None:
    await stack.create_migrated_template(net.pg)


@dataclass
class Stack:
    """One scenario's database, and the settings of its processes (on the service
    addresses) and of the test (through its relays)."""

    database_url: str  # the test's
    settings: Settings  # the processes'


@pytest.fixture
async def fresh(net: Net, net_template: None) -> Stack:
    database_url = await stack.copy_template(net.pg)
    client = aioredis.Redis.from_url(net.redis.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    redis_url = f"redis://{netlab.SERVICE_ADDRESSES['redis']}:{net.redis.port}/0"
    pg_url = database_url.replace("127.0.0.1", netlab.SERVICE_ADDRESSES["pg"])
    settings = make_settings(
        redis_url, pg_url, flush_interval=0.1, redis_timeout=REDIS_TIMEOUT_S,
        statement_timeout=1.0,
    )  # fmt: skip
    return Stack(database_url, settings)


def via(settings: Settings, relay: Relay | None, server: str) -> Settings:
    """`settings` with the URL of `server` ("redis" or "pg") pointed at `relay`."""
    if relay is None:
        return settings
    address = netlab.SERVICE_ADDRESSES[server]
    field = "redis_url" if server == "redis" else "database_url"
    old, new = f"{address}:{relay.target[1]}", f"127.0.0.1:{relay.port}"
    url = getattr(settings, field).replace(old, new)
    return settings.model_copy(update={field: url})


@asynccontextmanager
async def api_on(
    lab: netlab.Lab, settings: Settings, log: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """`viewcounter api` on the api host, and a client of it (through a relay), once ready."""
    port = free_port()
    argv = [*lab.prefix("api"), sys.executable, "-m", "services.cli", "api", "--port", str(port)]
    with (
        chaos.spawned(argv, chaos.process_env(settings), log),
        Relay(("127.0.0.1", port), target_ns=lab.ns("api")) as relay,
    ):
        async with chaos.browser_client(
            relay.port, timeout=10, connections=CLIENTS * 2, keepalive=CLIENTS * 2
        ) as client:
            await chaos.until_ready(client, "the api in its namespace")
            yield client


async def flusher_metric(relay: Relay, name: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{relay.port}/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def median_answer_s(load: chaos.Load, since: int) -> float:
    """The median time to answer of the hits answered 200 after the first `since` answers."""
    return statistics.median(s for _, s, status in load.answers[since:] if status == 200)


async def hold_unheard_api(load: chaos.Load) -> str:
    """While the api cannot hear Redis (partitioned, or its replies lost): hits answered 503,
    none acknowledged, through several of its probes for Redis' return."""
    cut = time.monotonic()
    refused = load.refused
    await chaos.until(lambda: load.refused >= refused + REFUSED_FIRST, "503 answers")
    acked = load.acked_total
    await chaos.until(lambda: load.refused >= refused + REFUSED_MORE, "more 503s")
    await chaos.until(lambda: time.monotonic() - cut >= UNHEARD_MIN_S, "the fault's span")
    assert load.acked_total == acked, "a hit was acknowledged while the api could not hear Redis"
    return (
        f"{load.refused - refused} answered 503 in {time.monotonic() - cut:.1f} s, "
        "none acknowledged"
    )


async def hold_unheard_flusher(load: chaos.Load, database_url: str, metrics: Relay) -> str:
    """While the flusher cannot hear Redis or Postgres (partitioned, or the replies lost):
    hits still acknowledged, a failed flush pass, at most one batch committed (the one
    already on its way, or one whose COMMIT arrived and whose answer was lost)."""
    batches = await chaos.ledger_count(database_url)
    failures = await flusher_metric(metrics, "viewcounter_flush_failures_total")

    async def failed() -> bool:
        return await flusher_metric(metrics, "viewcounter_flush_failures_total") > failures

    await chaos.until(failed, "a failed flush pass")
    await load.more_acked(50)
    during = await chaos.ledger_count(database_url) - batches
    assert during <= 1, f"{during} batches committed across the partition"
    return f"hits acknowledged throughout; a failed pass; {during} batch committed meanwhile"


async def hold_slow(
    load: chaos.Load, database_url: str, lab: netlab.Lab, link: netlab.Link, relay: Relay
) -> str:
    """A slow, lossy link still carries hits and batches."""
    answered = len(load.answers)
    before = median_answer_s(load, 0)
    batches = await chaos.ledger_count(database_url)
    await load.more_acked(SLOW_HITS)
    during_batches = await chaos.wait_for_batches(database_url, batches + SLOW_BATCHES - 1)
    dropped = lab.dropped(link)
    assert dropped > 0, "no packet was lost on the lossy link"
    assert relay.connections > 0, "nothing went through the slow relay"
    if link.client == "api":
        during = median_answer_s(load, answered)
        what = f"median hit answered in {before:.3f} s before, {during:.3f} s during"
    else:
        what = f"{during_batches - batches} batches committed over the slow link"
    return f"{what}; {dropped} packets dropped"


async def during_fault(
    scenario: Scenario,
    lab: netlab.Lab,
    load: chaos.Load,
    database_url: str,
    metrics: Relay,
    slow: Relay | None,
) -> str:
    """Put the scenario's fault on its link, hold it until its effect is seen, heal the link;
    the row's notes."""
    link = netlab.LINKS[scenario.link]
    try:
        if scenario.fault == "slow":
            assert slow is not None
            slow.latency_s = LATENCY_S
            lab.lose(link, LOSS)
            return await hold_slow(load, database_url, lab, link, slow)
        if scenario.fault == "partition":
            lab.partition(link)
        else:
            lab.lose_replies(link)
        if link.client == "api":
            notes = await hold_unheard_api(load)
        else:
            notes = await hold_unheard_flusher(load, database_url, metrics)
        dropped = lab.dropped(link)
        assert dropped > 0, "no packet was dropped on the link"
        if scenario.fault == "partition":
            return f"{notes}; {dropped} packets dropped"
        delivered = lab.delivered(link)
        assert delivered > 0, "nothing the client sent arrived"
        return f"{notes}; {delivered} packets arrived, {dropped} replies dropped"
    finally:
        lab.heal(link)
        if slow is not None:
            slow.latency_s = 0.0


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: f"{s.fault}-{s.link}")
async def test_network_fault_loses_and_doubles_nothing(
    net: Net, fresh: Stack, scenario: Scenario, tmp_path: Path
) -> None:
    lab, link = net.lab, netlab.LINKS[scenario.link]
    # A slow link is a relay in the client's namespace, in the client's path to the server.
    slow = None
    if scenario.fault == "slow":
        port = net.redis.port if link.server == "redis" else net.pg.port
        target = (netlab.SERVICE_ADDRESSES[link.server], port)
        slow = Relay(target, listen_ns=lab.ns(link.client), target_ns=lab.ns(link.client))
        slow.start()
    api_settings = via(fresh.settings, slow if link.client == "api" else None, link.server)
    flusher_settings = via(fresh.settings, slow if link.client == "flusher" else None, link.server)
    metrics_port = free_port()
    try:
        async with api_on(lab, api_settings, tmp_path / "api.log") as client:
            await register_site(client)
            load = chaos.Load(client, SITE, pages=20, seed=31)
            flusher_argv = [*lab.prefix("flusher"), sys.executable, "-m", "services.cli", "flusher"]
            env = chaos.process_env(flusher_settings, VIEWCOUNTER_METRICS_PORT=str(metrics_port))
            with (
                chaos.Sampler(fresh.database_url, [load]) as sampler,
                chaos.spawned(flusher_argv, env, tmp_path / "flusher.log") as flusher,
                Relay(("127.0.0.1", metrics_port), target_ns=lab.ns("flusher")) as metrics,
            ):
                async with load.flowing(clients=CLIENTS):
                    await load.more_acked(100)
                    await chaos.wait_for_batches(fresh.database_url, 0)
                    notes = await during_fault(
                        scenario, lab, load, fresh.database_url, metrics, slow
                    )
                    await load.more_acked(100)  # counting again
                assert await chaos.stop_gracefully(flusher) == 0  # its final flush
    finally:
        if slow is not None:
            slow.close()
    result = await chaos.final_report(
        scenario.title, fresh.database_url, [load], sampler, notes=notes
    )
    result.assert_exact()


def test_namespaces_left_by_a_crashed_run_are_removed_with_what_runs_in_them() -> None:
    netlab.require()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has exited: the "crashed run"
    stale = f"{netlab.PREFIX}{gone.pid}-redis"
    live = netlab.Lab().ns("probe")  # a live run's (this one's): it stays
    for name in (stale, live):
        netlab.run("ip", "netns", "add", name)
    left = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
    try:
        deadline = time.monotonic() + chaos.WAIT_S
        while str(left.pid) not in netlab.run("ip", "netns", "pids", stale).split():
            assert time.monotonic() < deadline, "the process never entered its namespace"
            time.sleep(chaos.POLL_S)
        assert stale in netlab.remove_stale()
        assert stale not in netlab.namespaces()
        assert live in netlab.namespaces()
        assert left.wait(10) == -signal.SIGKILL
    finally:
        left.kill()
        left.wait()
        for name in (stale, live):
            netlab.remove_namespace(name)
