"""Redis paused (SIGSTOP) under 500 concurrent hits: every hit is answered within
VIEWCOUNTER_REDIS_TIMEOUT plus a small margin, however many wait (the group commit's deadline
runs from the moment a hit is taken, its queue is bounded, and it fails fast while Redis is
away), and hits are counted again soon after SIGCONT."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.cli.localredis import RedisProcess
from tests.support import chaos
from tests.support.rawhttp import RawClient
from tests.support.stack import BROWSER_UA, SITE, register_site

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
REDIS_TIMEOUT_S = 1.0
# What an answer may take beyond the timeout: the api's event loop and this test's 500
# clients (one process, one core's worth of Python) queue a little.
MARGIN_S = 0.5
CLIENTS = 500
PAUSE_S = 4 * REDIS_TIMEOUT_S
# After SIGCONT: a probe finds Redis back within groupcommit.PROBE_INTERVAL_S (or at once,
# when one was out), plus the timeout of a probe sent just before.
RECOVERY_S = REDIS_TIMEOUT_S + 0.5 + MARGIN_S


async def test_redis_paused_under_500_concurrent_hits_answers_each_within_the_timeout(
    own_redis: Callable[..., RedisProcess], database_url: str, tmp_path: Path
) -> None:
    server, settings = chaos.fsyncing_redis_settings(own_redis, database_url, REDIS_TIMEOUT_S)
    with chaos.api_process(settings, tmp_path / "api.log", workers=1) as (api, port):
        async with chaos.browser_client(
            port, timeout=30, connections=CLIENTS + 10, keepalive=CLIENTS
        ) as client:
            await chaos.until_ready(client, "the api")
            await register_site(client)
            # httpx would measure itself at this concurrency (see rawhttp.py).
            raw = RawClient("127.0.0.1", port, {"user-agent": BROWSER_UA})
            load = chaos.Load(raw, SITE, pages=20, seed=11)  # type: ignore[arg-type]
            flusher_log = tmp_path / "flusher.log"
            with chaos.sampled_with_flusher(settings, [load], flusher_log) as (sampler, flusher):
                async with load.flowing(clients=CLIENTS):
                    await load.more_acked(1000)
                    assert server.pid is not None
                    os.kill(server.pid, signal.SIGSTOP)
                    paused = time.monotonic()
                    try:
                        await chaos.until(
                            lambda: time.monotonic() - paused >= PAUSE_S, "the pause", 2 * PAUSE_S
                        )
                        acked_paused = load.acked_total
                    finally:
                        os.kill(server.pid, signal.SIGCONT)
                    resumed = time.monotonic()
                    await load.more_acked(1)
                    recovered_s = time.monotonic() - resumed
                    await load.more_acked(1000)
                assert await chaos.stop_gracefully(flusher) == 0
            await raw.aclose()
            api_exit = await chaos.stop_gracefully(api, 40)

    refused = [took for _, took, status in load.answers if status == 503]
    slowest = max(load.answers, key=lambda answer: answer[1])
    late = [a for a in load.answers if a[1] > REDIS_TIMEOUT_S + MARGIN_S]
    # Hits acknowledged during the pause went through before it (answered within the bound).
    acked_in_pause = [
        a
        for a in load.answers
        if a[2] == 200 and paused + REDIS_TIMEOUT_S + MARGIN_S < a[0] + a[1] < resumed
    ]
    took = (
        f"503s in {min(refused):.2f}/{statistics.median(refused):.2f}/{max(refused):.2f} s "
        f"(min/median/max)"
    )
    result = await chaos.final_report(
        f"Redis SIGSTOP {PAUSE_S:.0f} s under {CLIENTS} concurrent hits (timeout "
        f"{REDIS_TIMEOUT_S} s)", database_url, [load], sampler,
        notes=(
            f"{len(refused)} answered 503, {took}; every answer within "
            f"{REDIS_TIMEOUT_S + MARGIN_S} s (slowest {slowest[1]:.2f} s); counting again "
            f"{recovered_s:.2f} s after SIGCONT; api exit {api_exit}"
        ),
    )  # fmt: skip
    assert not [a for a in load.answers if a[2] == 0], "a hit got no HTTP answer"
    assert not late, f"{len(late)} answers later than the bound, slowest {slowest}"
    assert not acked_in_pause, "a hit was acknowledged by a paused Redis"
    assert load.acked_total >= acked_paused  # sanity: the counter only grows
    assert recovered_s <= RECOVERY_S, f"counting again only {recovered_s:.2f} s after SIGCONT"
    result.assert_exact()
