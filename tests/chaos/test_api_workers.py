"""kill -9 of one worker of `viewcounter api --workers 2` in the middle of requests."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.support import chaos
from tests.support.stack import SITE, make_settings, register_site

# The slowest chaos test takes 15 s; each wait is bounded by harness.WAIT_S (30 s).
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
# A request this old is held by the stopped worker (the running one answers in milliseconds).
STUCK_S = 0.5


def workers_of(master: int) -> set[int]:
    """Pids of the uvicorn worker processes (multiprocessing spawn) of `master`."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == master and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


async def stop_a_worker_holding_requests(load: chaos.Load, workers: set[int]) -> tuple[int, int]:
    """SIGSTOP a worker that holds requests in flight (keep-alive connections stay with the
    worker that accepted them, and one may hold none); its pid and the requests it holds."""
    for _ in range(5):
        for worker in sorted(workers):
            os.kill(worker, signal.SIGSTOP)
            with contextlib.suppress(AssertionError):
                await chaos.until(
                    lambda: load.waiting_longer_than(STUCK_S) > 0, "a stuck request", 1.5
                )
                return worker, load.waiting_longer_than(STUCK_S)
            os.kill(worker, signal.SIGCONT)
    raise AssertionError("no worker held a request")


async def test_api_worker_killed_mid_request_loses_nothing_acknowledged(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, database_url, flush_interval=0.1)
    with chaos.api_process(settings, tmp_path / "api.log", workers=2) as (api, port):
        async with chaos.browser_client(port, timeout=10, connections=16, keepalive=16) as client:

            async def ready() -> bool:
                try:
                    answer = await client.get("/readyz")
                except httpx.HTTPError:
                    return False
                return answer.status_code == 200 and len(workers_of(api.pid)) == 2

            await chaos.until(ready, "the api and both workers")
            await register_site(client)
            load = chaos.Load(client, SITE, pages=20, seed=7)
            flusher_log = tmp_path / "flusher.log"
            with chaos.sampled_with_flusher(settings, [load], flusher_log) as (sampler, flusher):
                async with load.flowing(clients=8):
                    await load.more_acked(300)
                    before = workers_of(api.pid)
                    victim, held = await stop_a_worker_holding_requests(load, before)
                    os.kill(victim, signal.SIGKILL)

                    async def replaced() -> bool:
                        now = workers_of(api.pid)
                        return len(now) == 2 and victim not in now

                    await chaos.until(replaced, "uvicorn to start a new worker")
                    new_worker = (workers_of(api.pid) - before).pop()
                    await load.more_acked(300)
                assert await chaos.stop_gracefully(flusher) == 0
            api_exit = await chaos.stop_gracefully(api, 40)

    result = await chaos.final_report(
        "api worker kill -9 mid-request (--workers 2)", database_url, [load], sampler,
        notes=(
            f"{held} requests held by the worker at the kill; uvicorn replaced worker {victim} "
            f"by {new_worker}; api exit {api_exit} on SIGTERM"
        ),
    )  # fmt: skip
    assert load.unknown_total >= held  # the requests it held lost their answers
    result.assert_exact()
