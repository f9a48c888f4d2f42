"""A TCP proxy between the flusher process and Postgres cuts or delays the connection in the
middle of a flush transaction (tests/support/proxy.py), while hits flow."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from services.cli.localservers import free_port
from services.config import Settings
from tests.support import chaos
from tests.support.proxy import FAULTS, PostgresProxy
from tests.support.stack import make_settings

# The slowest chaos test takes 15 s; each wait is bounded by harness.WAIT_S (30 s).
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
SLOW_LINK_S = 0.02
SLOW_BATCHES = 3


def port_of(url: str) -> int:
    found = re.search(r":(\d+)/", url)
    assert found is not None, url
    return int(found.group(1))


async def scrape(port: int, name: str) -> float:
    """One sample of the flusher's own metrics."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_connection_cut_or_delayed_mid_transaction_loses_and_doubles_nothing(
    api: httpx.AsyncClient, site: str, settings: Settings, tmp_path: Path
) -> None:
    proxy = PostgresProxy(target_port=port_of(settings.database_url))
    await proxy.start()
    direct = settings.database_url
    flusher_settings = make_settings(settings.redis_url, proxy.url(direct), flush_interval=0.05)
    metrics_port = free_port()
    load = chaos.Load(api, site, pages=40, seed=21)
    try:
        with chaos.Sampler(direct, [load]) as sampler:
            async with load.flowing(clients=4):
                with chaos.flusher_process(
                    flusher_settings,
                    tmp_path / "flusher.log",
                    VIEWCOUNTER_METRICS_PORT=str(metrics_port),
                ) as flusher:
                    batches = await chaos.wait_for_batches(direct, 0)
                    for fault in FAULTS:
                        proxy.arm(fault)
                        await proxy.wait_fired()
                        # The flusher retries; a batch commits after the fault (the lost-reply
                        # one may already have).
                        committed = await chaos.ledger_count(direct)
                        batches = await chaos.wait_for_batches(direct, committed)
                    proxy.latency_s = SLOW_LINK_S
                    await chaos.wait_for_batches(direct, batches + SLOW_BATCHES - 1)
                    proxy.latency_s = 0.0
                    replayed = await scrape(metrics_port, "viewcounter_replayed_batches_total")
                    failures = await scrape(metrics_port, "viewcounter_flush_failures_total")
                    await load.halt()
                    assert await chaos.stop_gracefully(flusher) == 0
    finally:
        await proxy.close()
    result = await chaos.final_report(
        "Postgres link cut/delayed mid-transaction (proxy)", direct, [load], sampler,
        notes=(
            f"faults {', '.join(proxy.fired)}, then {SLOW_LINK_S * 1000:.0f} ms per chunk; "
            f"{failures:.0f} failed passes, {replayed:.0f} batches replayed, "
            f"{proxy.connections} connections"
        ),
    )  # fmt: skip
    assert proxy.fired == list(FAULTS)
    assert replayed >= 1  # at least the batch whose COMMIT answer was lost
    assert load.unknown_total == 0
    result.assert_exact()
