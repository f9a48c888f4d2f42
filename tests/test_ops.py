"""Operations: metrics of a 2-worker api and of the flusher after known traffic, readiness and
flush lag through a Postgres outage, start-up waits, request ids and logs, and the deploy/
files (alerts, scrape config, dashboard) checked against the metrics really scraped."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.cli.localpostgres import PostgresProcess
from services.cli.localredis import RedisProcess
from services.cli.localservers import free_port
from services.config import Settings
from services.counter import keys
from tests.support import chaos
from tests.support.stack import (
    BROWSER_UA,
    SITE,
    copy_template,
    create_database,
    create_migrated_template,
    make_settings,
    register_site,
    running_api,
    running_ops,
)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HITS_ROUTE = "/v1/sites/{site}/hits"
WAIT_S = 60.0
# Tests take under 5 s; a stuck one fails in `until` with what it waited for, first.
pytestmark = pytest.mark.timeout(2 * WAIT_S)


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S
) -> None:
    """Poll `condition` until it holds (bounded: a hang fails with `what`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return scraped.get((name, frozenset(labels.items())), 0.0)


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """A `viewcounter` process's environment (as the chaos harness builds it), logging at info."""
    return chaos.process_env(settings, **{"VIEWCOUNTER_LOG_LEVEL": "info", **extra})


def viewcounter(
    args: list[str], env: dict[str, str], log: Path
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`viewcounter ARGS` as its own process (group); SIGTERM at the end, then SIGKILL."""
    return chaos.spawned([sys.executable, "-m", "services.cli", *args], env, log, grace_s=30)


async def get(url: str, **kwargs: object) -> httpx.Response | None:
    """A GET that answers None instead of raising while the server is not up."""
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return await client.get(url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError:
            return None


async def scrape_metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples a process's /metrics at `url` serves; none while it does not answer."""
    response = await get(f"{url}/metrics")
    return {} if response is None else samples(response.text)


async def status_of(url: str) -> int | None:
    response = await get(url)
    return None if response is None else response.status_code


@dataclass
class Traffic:
    """What the module's known traffic was, and what the processes then showed."""

    sent: dict[str, int]
    api_metrics: str
    flusher_metrics: str
    # What the public port answered for /metrics and /readyz, and the metrics listener's
    # /readyz, during the traffic.
    public_metrics: int
    public_readyz: tuple[int, object]
    listener_readyz: tuple[int, object]
    worker_prefixes: set[str]
    api_log: str
    request_id_echo: str
    batches: int
    rows: int


async def send_known_traffic(base: str) -> tuple[dict[str, int], set[str], str]:
    """Hits of every outcome over new connections (so both workers take some); what was sent,
    the request-id prefixes seen (one per worker), and the echo of a given request id."""
    sent = {"counted": 0, "duplicate": 0, "bot": 0, "rejected": 0}
    prefixes: set[str] = set()
    url = f"{base}/v1/sites/{SITE}/hits"

    async def one(body: dict[str, str], ua: str = BROWSER_UA) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10, headers={"user-agent": ua}) as client:
            response = await client.post(url, json=body)
        prefixes.add(response.headers["x-request-id"].rpartition("-")[0])
        return response

    for i in range(40):
        response = await one({"page": f"p{i % 4}", "visitor": f"v{i}"})
        assert response.json()["counted"] is True
        sent["counted"] += 1
    for _ in range(7):
        response = await one({"page": "p0", "visitor": "v0"})
        assert response.json()["reason"] == "duplicate"
        sent["duplicate"] += 1
    for i in range(5):
        response = await one({"page": "p1", "visitor": f"bot{i}"}, ua=GOOGLEBOT)
        assert response.json()["reason"] == "bot"
        sent["bot"] += 1
    for bad in ({"page": ""}, {"nope": "x"}, {"page": "a\u200bb"}):
        response = await one(bad)
        assert response.status_code == 422
        sent["rejected"] += 1
    async with httpx.AsyncClient(timeout=10, headers={"user-agent": BROWSER_UA}) as client:
        unknown = await client.post(f"{base}/v1/sites/nosuchsite/hits", json={"page": "a"})
        assert unknown.status_code == 404
        given = await client.get(
            f"{base}/v1/sites/{SITE}/counts", headers={"x-request-id": "ops-test-id-42"}
        )
    return sent, prefixes, given.headers["x-request-id"]


@pytest.fixture(scope="module")
async def traffic(
    tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresProcess, migrated_template: str
) -> AsyncIterator[Traffic]:
    tmp = tmp_path_factory.mktemp("ops")
    redis = RedisProcess(tmp / "redis", port=free_port(), appendonly=True)
    redis.start()
    try:
        database_url = await copy_template(pg_server)
        settings = make_settings(redis.url, database_url, dedupe_window=1800)
        api_port, flusher_port, listener_port = free_port(), free_port(), free_port()
        base = f"http://127.0.0.1:{api_port}"
        listener = f"http://127.0.0.1:{listener_port}"
        api_log = tmp / "api.log"
        api_env = process_env(
            settings,
            VIEWCOUNTER_LOG_LEVEL="debug",
            VIEWCOUNTER_API_METRICS_PORT=str(listener_port),
        )
        flusher_env = process_env(settings, VIEWCOUNTER_METRICS_PORT=str(flusher_port))
        api_args = ["api", "--workers", "2", "--port", str(api_port)]
        with viewcounter(api_args, api_env, api_log) as api:
            await until(lambda: _is(status_of(f"{base}/readyz"), 200), "api ready")
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                await register_site(client)
            sent, prefixes, echo = await send_known_traffic(base)
            public_metrics = await get(f"{base}/metrics")
            public_readyz = await get(f"{base}/readyz")
            listener_readyz = await get(f"{listener}/readyz")
            assert public_metrics and public_readyz and listener_readyz
            with viewcounter(["flusher"], flusher_env, tmp / "flusher.log") as flusher:
                flusher_url = f"http://127.0.0.1:{flusher_port}"

                async def flushed_all() -> bool:
                    response = await get(f"{flusher_url}/metrics")
                    if response is None:
                        return False
                    flushed = value(samples(response.text), "viewcounter_flushed_hits_total")
                    return flushed == sent["counted"]

                await until(flushed_all, "the flusher to move every counted hit")
                flusher_text = (await get(f"{flusher_url}/metrics")).text  # type: ignore[union-attr]
                flusher.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(flusher.wait, 30) == 0
            api_text = (await get(f"{listener}/metrics")).text  # type: ignore[union-attr]
            api.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(api.wait, 40) == 0
        conn = await asyncpg.connect(database_url)
        try:
            batches, rows = await conn.fetchrow(
                "SELECT count(*), coalesce(sum(rows), 0) FROM flush_batches"
            )
        finally:
            await conn.close()
        yield Traffic(
            sent=sent,
            api_metrics=api_text,
            flusher_metrics=flusher_text,
            public_metrics=public_metrics.status_code,
            public_readyz=(public_readyz.status_code, public_readyz.json()),
            listener_readyz=(listener_readyz.status_code, listener_readyz.json()),
            worker_prefixes=prefixes,
            api_log=api_log.read_text(),
            request_id_echo=echo,
            batches=int(batches),
            rows=int(rows),
        )
    finally:
        redis.stop()


async def _is(status: Awaitable[int | None], expected: int) -> bool:
    return await status == expected


def test_two_workers_answered_and_metrics_of_both_are_merged_exactly(traffic: Traffic) -> None:
    assert len(traffic.worker_prefixes) == 2, "both workers must have taken hits"
    api = samples(traffic.api_metrics)
    for outcome in ("counted", "duplicate", "bot"):
        assert (
            value(api, "viewcounter_hits_total", site=SITE, outcome=outcome)
            == (traffic.sent[outcome])
        ), outcome
    assert value(api, "viewcounter_hits_total", site=SITE, outcome="rejected") == 3
    assert value(api, "viewcounter_hits_total", site="_other", outcome="rejected") == 1
    ok_hits = traffic.sent["counted"] + traffic.sent["duplicate"] + traffic.sent["bot"]
    count = "viewcounter_http_request_duration_seconds_count"
    assert value(api, count, route=HITS_ROUTE, method="POST", status="2xx") == ok_hits
    assert value(api, count, route=HITS_ROUTE, method="POST", status="4xx") == 4
    assert value(api, count, route="/v1/sites/{site}/counts", method="GET", status="2xx") == 1
    # No label carries a page id, a visitor or a raw path.
    for (_name, labels), _v in api.items():
        for _key, label in labels:
            assert not re.fullmatch(r"p\d|v\d+|bot\d|nosuchsite|/v1/sites/quan11/.*", label)
    assert value(api, "viewcounter_redis_errors_total") == 0
    assert value(api, "viewcounter_postgres_errors_total") == 0
    assert value(api, "viewcounter_redis_memory_used_bytes") > 0


def test_the_public_port_shows_no_metrics_and_a_bare_readiness(traffic: Traffic) -> None:
    assert traffic.public_metrics == 404
    assert traffic.public_readyz == (200, {"status": "ok"})
    # The metrics listener (VIEWCOUNTER_API_METRICS_PORT, in the supervisor of the two
    # workers) has the checks.
    code, body = traffic.listener_readyz
    assert code == 200
    assert body == {
        "status": "ok",
        "checks": {
            "redis": "ok",
            "redis_eviction": "ok",
            "redis_layout": "ok",
            "redis_memory": "ok (no maxmemory set: Redis may grow until the machine runs out "
            "of memory)",
            "redis_persistence": "ok",
            "postgres": "ok",
            "migrations": "ok",
        },
    }


def test_flusher_metrics_match_the_ledger(traffic: Traffic) -> None:
    flusher = samples(traffic.flusher_metrics)
    assert value(flusher, "viewcounter_flushed_hits_total") == traffic.sent["counted"]
    assert value(flusher, "viewcounter_flushed_batches_total") == traffic.batches >= 1
    assert value(flusher, "viewcounter_flushed_rows_total") == traffic.rows >= 4
    assert value(flusher, "viewcounter_flush_failures_total") == 0
    assert value(flusher, "viewcounter_discarded_hits_total") == 0
    assert value(flusher, "viewcounter_flush_last_success_timestamp_seconds") > 0
    assert value(flusher, "viewcounter_flush_interval_seconds") == 0.2
    assert value(flusher, "viewcounter_flush_duration_seconds_count", result="ok") >= 1
    # The independent watch, read from Redis at the scrape: one node, nothing left unflushed.
    oldest = [v for (n, _), v in flusher.items() if n == "viewcounter_oldest_unflushed_seconds"]
    assert oldest == [0.0]
    node_lag = [v for (n, _), v in flusher.items() if n == "viewcounter_flush_node_lag_seconds"]
    assert len(node_lag) == 1
    # The api's series are not the flusher's, and the other way round.
    assert not any(name.startswith("viewcounter_hits") for name, _ in flusher)
    assert not any(name.startswith("viewcounter_flush") for name, _ in samples(traffic.api_metrics))


def test_logs_are_json_with_request_ids_and_no_addresses(traffic: Traffic) -> None:
    lines = [line for line in traffic.api_log.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert traffic.request_id_echo == "ops-test-id-42"
    access = [e for e in entries if e.get("logger") == "viewcounter.access"]
    assert any(e.get("request_id") == "ops-test-id-42" for e in access)
    hits_logged = [e for e in access if e.get("route") == HITS_ROUTE]
    assert len(hits_logged) == sum(traffic.sent.values()) + 1  # + the unknown site's
    assert all(e["request_id"] for e in hits_logged)
    # The client's address is nowhere (uvicorn's own start-up line, and the metrics
    # listener's, name the listening one).
    listening = ("Uvicorn running", "api metrics and readiness checks on")
    assert not [
        line for line in lines if "127.0.0.1" in line and not any(m in line for m in listening)
    ]
    assert not re.search(r'"v\d+"', traffic.api_log)  # no visitor id


def _expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "viewcounter.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return exprs


def test_every_alert_and_dashboard_metric_is_scraped(traffic: Traffic) -> None:
    scraped = {name for name, _ in samples(traffic.api_metrics)}
    scraped |= {name for name, _ in samples(traffic.flusher_metrics)}
    exprs = _expressions()
    used = {name for expr in exprs for name in re.findall(r"\bviewcounter_\w+", expr)}
    assert len(exprs) >= 10 and len(used) >= 12
    assert used - scraped == set()
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    assert {
        "ViewcounterFlushLagHigh",
        "ViewcounterErrorRatioHigh",
        "ViewcounterRedisMemoryNearBound",
        "ViewcounterFlusherDown",
        "ViewcounterFlushFailing",
        "ViewcounterUnflushedWorkOld",
    } <= names


async def test_postgres_outage_raises_flush_lag_degrades_the_api_unreadies_the_flusher(
    own_postgres: PostgresProcess, redis_url: str, tmp_path: Path
) -> None:
    await create_migrated_template(own_postgres)
    database_url = await copy_template(own_postgres)
    settings = make_settings(redis_url, database_url, flush_interval=0.2, statement_timeout=2)
    port = free_port()
    flusher_url = f"http://127.0.0.1:{port}"
    env = process_env(settings, VIEWCOUNTER_METRICS_PORT=str(port))
    scrape = partial(scrape_metrics, flusher_url)

    async def lag() -> float:
        return value(await scrape(), "viewcounter_flush_lag_seconds")

    async with running_api(settings) as api, running_ops(settings) as ops:
        await register_site(api)
        with viewcounter(["flusher"], env, tmp_path / "flusher.log"):
            counted = 0
            for i in range(5):
                assert (await api.post(f"/v1/sites/{SITE}/hits", json={"page": f"a{i}"})).json()[
                    "counted"
                ]
                counted += 1

            async def flushed() -> bool:
                return value(await scrape(), "viewcounter_flushed_hits_total") == counted

            await until(flushed, "the first hits flushed")
            assert await status_of(f"{flusher_url}/readyz") == 200
            assert (await api.get("/readyz")).status_code == 200

            await asyncio.to_thread(own_postgres.kill)
            for i in range(5):
                response = await api.post(f"/v1/sites/{SITE}/hits", json={"page": f"b{i}"})
                assert response.json()["counted"]  # hits keep flowing without Postgres
                counted += 1
            await until(lambda: _is(status_of(f"{flusher_url}/readyz"), 503), "flusher unready")
            down = await get(f"{flusher_url}/readyz")
            assert down is not None and down.json()["status"] == "unavailable"
            assert down.json()["checks"]["postgres"] != "ok"
            # Hits still count: the api stays in the load balancer, "degraded".
            public_down = await api.get("/readyz")
            assert (public_down.status_code, public_down.json()) == (200, {"status": "degraded"})
            api_down = await ops.get("/readyz")
            assert api_down.status_code == 200
            assert api_down.json()["status"] == "degraded"
            api_checks = api_down.json()["checks"]
            assert [api_checks[name] for name in ("redis", "redis_eviction", "redis_layout")] == [
                "ok",
                "ok",
                "ok",
            ]
            assert api_checks["postgres"].startswith(("ConnectionRefusedError", "OSError"))
            assert api_checks["migrations"] == "unknown (Postgres unreachable)"
            assert (await api.get("/healthz")).status_code == 200
            assert await status_of(f"{flusher_url}/healthz") == 200  # alive, only not ready

            async def lag_over_5_intervals() -> bool:
                return await lag() > 5 * settings.flush_interval

            await until(lag_over_5_intervals, "flush lag above 5 intervals")
            during = await scrape()
            assert value(during, "viewcounter_flush_failures_total") > 0
            assert value(during, "viewcounter_postgres_errors_total") > 0
            assert value(during, "viewcounter_flush_duration_seconds_count", result="failed") > 0

            await asyncio.to_thread(own_postgres.restart)
            await until(flushed, "every hit flushed after Postgres is back")
            await until(lambda: _is(status_of(f"{flusher_url}/readyz"), 200), "flusher ready")
            api_up = await api.get("/readyz")
            assert (api_up.status_code, api_up.json()["status"]) == (200, "ok")

            async def lag_back() -> bool:
                return await lag() < 5 * settings.flush_interval

            await until(lag_back, "flush lag back under 5 intervals")

            async def no_snapshot_left() -> bool:
                return value(await scrape(), "viewcounter_snapshot_keys") == 0

            await until(no_snapshot_left, "the frozen batch gone from Redis")
            # The batch frozen while Postgres was down was finished by a later pass.
            assert value(await scrape(), "viewcounter_replayed_batches_total") >= 1
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT views FROM site_views WHERE site = $1", SITE) == counted
    finally:
        await conn.close()


DISK_FULL_SQL = """
CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
    USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON flush_batches
  FOR EACH ROW EXECUTE FUNCTION disk_full();
"""


async def test_flusher_is_unready_while_its_passes_fail_though_postgres_answers(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, database_url, flush_interval=0.1)
    port = free_port()
    flusher_url = f"http://127.0.0.1:{port}"
    env = process_env(settings, VIEWCOUNTER_METRICS_PORT=str(port))
    scrape = partial(scrape_metrics, flusher_url)

    async with running_api(settings) as api:
        await register_site(api)
        conn = await asyncpg.connect(database_url)
        try:
            # Postgres answers (the probe's SELECT passes) but every flush write fails, as
            # with a full disk under it.
            await conn.execute(DISK_FULL_SQL)
            with viewcounter(["flusher"], env, tmp_path / "flusher.log"):
                await until(lambda: _is(status_of(f"{flusher_url}/healthz"), 200), "flusher up")
                for i in range(5):
                    hit = await api.post(f"/v1/sites/{SITE}/hits", json={"page": f"a{i}"})
                    assert hit.json()["counted"] is True
                await until(lambda: _is(status_of(f"{flusher_url}/readyz"), 503), "unready")
                down = await get(f"{flusher_url}/readyz")
                assert down is not None and down.json()["status"] == "unavailable"
                checks = down.json()["checks"]
                assert (checks["redis"], checks["postgres"], checks["migrations"]) == (
                    "ok",
                    "ok",
                    "ok",
                )
                assert re.fullmatch(
                    r"\d+ flush passes in a row failed, the last: DatabaseUnavailable: "
                    r"DiskFullError: could not extend file .*No space left on device",
                    checks["flush_passes"],
                ), checks["flush_passes"]
                assert int(checks["flush_passes"].split()[0]) >= 3
                assert value(await scrape(), "viewcounter_flush_consecutive_failures") >= 3
                api_ready = await api.get("/readyz")  # the api counts on
                assert (api_ready.status_code, api_ready.json()["status"]) == (200, "ok")

                await conn.execute("DROP TRIGGER disk_full ON flush_batches")

                async def flushed() -> bool:
                    return value(await scrape(), "viewcounter_flushed_hits_total") == 5

                await until(flushed, "every hit flushed once the disk has room")
                await until(lambda: _is(status_of(f"{flusher_url}/readyz"), 200), "ready again")
                ready = await get(f"{flusher_url}/readyz")
                assert ready is not None and ready.json()["checks"]["flush_passes"] == "ok"
                assert value(await scrape(), "viewcounter_flush_consecutive_failures") == 0
            assert await conn.fetchval("SELECT views FROM site_views WHERE site = $1", SITE) == 5
        finally:
            await conn.close()


async def test_api_is_unready_when_redis_may_evict_or_holds_another_layout(
    api: httpx.AsyncClient, ops: httpx.AsyncClient, settings: Settings
) -> None:
    admin = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        ready = await ops.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "ok")
        assert list(ready.json()["checks"]) == [
            "redis",
            "redis_eviction",
            "redis_layout",
            "redis_memory",
            "redis_persistence",
            "postgres",
            "migrations",
        ]
        await admin.config_set("maxmemory-policy", "allkeys-lru")
        try:
            evicting = await ops.get("/readyz")
            public = await api.get("/readyz")
        finally:
            await admin.config_set("maxmemory-policy", "noeviction")
        # The load balancer's view: the status only, the same code.
        assert (public.status_code, public.json()) == (503, {"status": "unavailable"})
        assert (evicting.status_code, evicting.json()["status"]) == (503, "unavailable")
        assert evicting.json()["checks"]["redis_eviction"] == (
            "Redis maxmemory-policy is allkeys-lru: it would evict unflushed counts; "
            "set it to noeviction"
        )
        recorded = await admin.get(keys.LAYOUT_KEY)
        await admin.set(keys.LAYOUT_KEY, settings.shards + 1)
        try:
            split = await ops.get("/readyz")
        finally:
            if recorded is None:
                await admin.delete(keys.LAYOUT_KEY)
            else:
                await admin.set(keys.LAYOUT_KEY, recorded)
        assert (split.status_code, split.json()["status"]) == (503, "unavailable")
        assert split.json()["checks"]["redis_layout"].startswith(
            f"Redis holds sites split over {settings.shards + 1} units, VIEWCOUNTER_SHARDS "
            f"says {settings.shards}"
        )
        assert (await api.get("/readyz")).status_code == 200
    finally:
        await admin.aclose()


async def test_flusher_waits_for_its_dependencies_then_exits_1_with_a_clear_message(
    pg_server: PostgresProcess, redis_url: str, tmp_path: Path
) -> None:
    unmigrated = await create_database(pg_server, "ops_unmigrated")
    settings = make_settings(redis_url, unmigrated)
    log = tmp_path / "flusher.log"
    env = process_env(
        settings, VIEWCOUNTER_STARTUP_TIMEOUT="1.5", VIEWCOUNTER_METRICS_PORT=str(free_port())
    )
    with viewcounter(["flusher"], env, log) as proc:
        assert await asyncio.to_thread(proc.wait, 30) == 1
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    waits = [e for e in entries if e["message"].startswith("waiting for postgres")]
    assert len(waits) >= 2 and waits[0]["attempt"] == 1
    assert "migrations not applied" in waits[0]["error"]
    final = [e for e in entries if e["level"] == "error"]
    assert len(final) == 1
    assert final[0]["message"].startswith("flusher not started: postgres still unavailable")
    assert "viewcounter migrate" in final[0]["message"]


async def test_api_waits_for_redis_then_serves_and_counts_once_redis_is_up(
    own_redis: Callable[..., RedisProcess], database_url: str, tmp_path: Path
) -> None:
    redis = own_redis()
    redis.stop()  # down when the api starts
    settings = make_settings(redis.url, database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    listener_port = free_port()
    env = process_env(
        settings, VIEWCOUNTER_STARTUP_TIMEOUT="1", VIEWCOUNTER_API_METRICS_PORT=str(listener_port)
    )
    with viewcounter(["api", "--port", str(port)], env, log):
        await until(lambda: _is(status_of(f"{base}/healthz"), 200), "api serving")
        ready = await get(f"{base}/readyz")
        assert ready is not None and ready.status_code == 503
        assert ready.json() == {"status": "unavailable"}
        # One worker: the metrics listener runs in the worker's own process.
        checked = await get(f"http://127.0.0.1:{listener_port}/readyz")
        assert checked is not None and checked.status_code == 503
        assert checked.json()["checks"]["redis"] != "ok"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            down = await client.post(f"/v1/sites/{SITE}/hits", json={"page": "a"})
            assert down.status_code == 503
            redis.restart()
            await until(lambda: _is(status_of(f"{base}/readyz"), 200), "api ready")
            await register_site(client)
            up = await client.post(
                f"/v1/sites/{SITE}/hits", json={"page": "a"}, headers={"user-agent": BROWSER_UA}
            )
            assert up.json()["counted"] is True
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(e["message"].startswith("waiting for redis (attempt 1") for e in entries)
    assert any("serving anyway" in e["message"] for e in entries)


async def test_api_refuses_to_start_when_its_metrics_port_is_taken(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, database_url)
    log = tmp_path / "api.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = process_env(settings, VIEWCOUNTER_API_METRICS_PORT=str(port))
        with viewcounter(["api", "--port", str(free_port())], env, log) as proc:
            assert await asyncio.to_thread(proc.wait, 30) == 2
    errors = [json.loads(line) for line in log.read_text().splitlines() if '"error"' in line]
    assert [e["message"] for e in errors if e["level"] == "error"] == [
        f"refusing to start: the metrics listener cannot listen on 127.0.0.1:{port}: "
        "[Errno 98] Address already in use"
    ]


async def test_request_ids_are_echoed_bounded_and_generated(api: httpx.AsyncClient) -> None:
    given = await api.get("/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    for bad in ("x" * 129, "has space", "ünïcode"):
        response = await api.get("/healthz", headers={"x-request-id": bad.encode("utf-8")})
        assert response.headers["x-request-id"] != bad
    first = (await api.get("/healthz")).headers["x-request-id"]
    second = (await api.get("/healthz")).headers["x-request-id"]
    assert first != second and first.rpartition("-")[0] == second.rpartition("-")[0]


async def test_rejected_hits_before_routing_are_counted_with_their_route(
    api: httpx.AsyncClient, ops: httpx.AsyncClient, site: str
) -> None:
    oversized = await api.post(
        f"/v1/sites/{site}/hits", content=b"x" * 20_000, headers={"content-type": "text/plain"}
    )
    assert oversized.status_code == 413
    scraped = samples((await ops.get("/metrics")).text)
    count = "viewcounter_http_request_duration_seconds_count"
    assert value(scraped, count, route=HITS_ROUTE, method="POST", status="4xx") >= 1
    assert value(scraped, "viewcounter_hits_total", site=site, outcome="rejected") >= 1
    missing = await api.get("/no/such/path")
    assert missing.status_code == 404
    scraped = samples((await ops.get("/metrics")).text)
    assert value(scraped, count, route="unmatched", method="GET", status="4xx") >= 1
