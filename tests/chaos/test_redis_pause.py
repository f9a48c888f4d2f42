"""Redis paused (SIGSTOP) for longer than the hit path's timeout, while hits flow."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.cli.localredis import RedisProcess
from tests.support import chaos
from tests.support.stack import SITE, register_site, running_api

# The slowest chaos test takes 15 s; each wait is bounded by harness.WAIT_S (30 s).
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
REDIS_TIMEOUT_S = 0.5
# 503s to see before, and then while, checking that nothing is acknowledged: the pause lasts
# several client timeouts, and longer than the flusher's own Redis timeout (3 s).
REFUSED_FIRST = 8
REFUSED_MORE = 16
MIN_PAUSE_S = 3.5


async def test_redis_paused_past_the_timeout_answers_503_and_counts_nothing_twice(
    own_redis: Callable[..., RedisProcess], database_url: str, tmp_path: Path
) -> None:
    server, settings = chaos.fsyncing_redis_settings(own_redis, database_url, REDIS_TIMEOUT_S)
    async with running_api(settings) as client:
        await register_site(client)
        load = chaos.Load(client, SITE, pages=20, seed=8)
        watcher = chaos.Load(client, SITE, pages=1, seed=9)  # sequential hits on a page of its own
        flusher_log = tmp_path / "flusher.log"
        with chaos.sampled_with_flusher(settings, [load, watcher], flusher_log) as (
            sampler,
            flusher,
        ):
            async with load.flowing(clients=4):
                await load.more_acked(200)
                assert server.pid is not None
                os.kill(server.pid, signal.SIGSTOP)
                paused = time.monotonic()
                try:
                    refused = load.refused
                    await chaos.until(
                        lambda: load.refused >= refused + REFUSED_FIRST, "503 answers"
                    )
                    acked = load.acked_total
                    await chaos.until(lambda: load.refused >= refused + REFUSED_MORE, "more 503s")
                    # 503s now come at once (fail-fast): the pause still outlasts the flusher's
                    # own Redis timeout.
                    await chaos.until(lambda: time.monotonic() - paused >= MIN_PAUSE_S, "the pause")
                    assert load.acked_total == acked, "a hit was acknowledged by a paused Redis"
                finally:
                    os.kill(server.pid, signal.SIGCONT)
                pause_s = time.monotonic() - paused
                await load.more_acked(200)
            # Every answer after the pause belongs to its own request (a timed-out call must
            # not leave a pooled connection one reply behind): sequential hits on one page
            # are answered n, n+1, n+2, ...
            shown = []
            for _ in range(20):
                body = await watcher.one("watched")
                assert body is not None
                shown.append(int(str(body["page_views"])))
            assert shown == list(range(shown[0], shown[0] + 20)), shown
            assert await chaos.stop_gracefully(flusher) == 0

    result = await chaos.final_report(
        f"Redis SIGSTOP {pause_s:.1f} s (timeout {REDIS_TIMEOUT_S} s)", database_url,
        [load, watcher], sampler,
        notes=f"{load.refused} answered 503 while paused; nothing acknowledged meanwhile",
    )  # fmt: skip
    # In Postgres - acknowledged = the timed-out calls Redis ran after SIGCONT (unknown outcome).
    result.assert_exact()
