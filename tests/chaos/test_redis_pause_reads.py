"""Redis paused (SIGSTOP) while every api route that reads or writes Redis is called by many
clients at once: counts, stats, top, the badge, the batch route and hits each answer within
VIEWCOUNTER_REDIS_TIMEOUT plus a small margin (as tests/chaos/test_redis_pause_bound.py
requires of hits), with 200 or 503 `redis_unavailable`."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from services.cli.localredis import RedisProcess
from tests.support import chaos
from tests.support.rawhttp import Answer, RawClient
from tests.support.stack import ADMIN, BROWSER_UA, SITE, register_site

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
REDIS_TIMEOUT_S = 1.0
# As in test_redis_pause_bound.py: the api's event loop and this test's clients (one process)
# queue a little.
MARGIN_S = 0.5
PAUSE_S = 4 * REDIS_TIMEOUT_S
# More callers than the api's Redis pool has connections: a request that waits for a
# connection must still be answered in time.
CLIENTS_PER_ROUTE = 10
REDIS_CONNECTIONS = 8
Send = Callable[[RawClient], Awaitable[Answer]]
_batch_keys = itertools.count()


def routes() -> dict[str, Send]:
    """One request of each route that reads or writes Redis, by name."""
    return {
        "counts": lambda c: c.get(f"/v1/sites/{SITE}/counts?page=p1&page=p2"),
        "stats": lambda c: c.get(f"/v1/sites/{SITE}/stats"),
        "top": lambda c: c.get(f"/v1/sites/{SITE}/top?period=today"),
        "badge": lambda c: c.get(f"/v1/sites/{SITE}/badge.svg?page=p1"),
        "batch": lambda c: c.post(
            f"/v1/sites/{SITE}/hits/batch",
            {"hits": [{"page": "p2"}, {"page": "p3"}]},
            {**ADMIN, "idempotency-key": f"k{next(_batch_keys)}"},
        ),
        "hit": lambda c: c.post(f"/v1/sites/{SITE}/hits", {"page": "p1"}),
    }


async def test_redis_paused_every_redis_route_answers_within_the_timeout(
    own_redis: Callable[..., RedisProcess], database_url: str, tmp_path: Path
) -> None:
    server, settings = chaos.fsyncing_redis_settings(own_redis, database_url, REDIS_TIMEOUT_S)
    # Per route: (when sent, seconds until answered, status, error code of a 503).
    answers: dict[str, list[tuple[float, float, int, str]]] = {name: [] for name in routes()}
    with chaos.api_process(
        settings,
        tmp_path / "api.log",
        workers=1,
        VIEWCOUNTER_REDIS_MAX_CONNECTIONS=str(REDIS_CONNECTIONS),
    ) as (api, port):
        async with chaos.browser_client(port, timeout=30, connections=4, keepalive=4) as client:
            await chaos.until_ready(client, "the api")
            await register_site(client)
        raw = RawClient("127.0.0.1", port, {"user-agent": BROWSER_UA})
        for name, send in routes().items():  # each works before the pause
            answer = await send(raw)
            assert answer.status_code == 200, (name, answer.text)
        stop = asyncio.Event()

        async def caller(name: str, send: Send) -> None:
            while not stop.is_set():
                sent = time.monotonic()
                answer = await send(raw)
                took = time.monotonic() - sent
                code = answer.json()["error"]["code"] if answer.status_code == 503 else ""
                answers[name].append((sent, took, answer.status_code, code))
                await asyncio.sleep(0.01)

        callers = [
            asyncio.create_task(caller(name, send))
            for name, send in routes().items()
            for _ in range(CLIENTS_PER_ROUTE)
        ]
        try:
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                await chaos.until(
                    lambda: time.monotonic() - paused >= PAUSE_S, "the pause", 2 * PAUSE_S
                )
            finally:
                os.kill(server.pid, signal.SIGCONT)
            resumed = time.monotonic()

            def all_routes_answer_200_again() -> bool:
                return all(
                    any(a[0] > resumed and a[2] == 200 for a in got) for got in answers.values()
                )

            await chaos.until(all_routes_answer_200_again, "every route answering 200 again")
        finally:
            stop.set()
            await asyncio.gather(*callers)
            await raw.aclose()
        await chaos.stop_gracefully(api, 40)

    bound = REDIS_TIMEOUT_S + MARGIN_S
    figures = {
        name: (len(got), sum(1 for a in got if a[2] == 503), max(a[1] for a in got))
        for name, got in answers.items()
    }
    print(
        f"\nRedis paused {PAUSE_S:.0f} s, {CLIENTS_PER_ROUTE} callers per route: "
        + ", ".join(
            f"{n} {a} answers, {r} 503, slowest {s:.2f} s" for n, (a, r, s) in figures.items()
        )
    )
    late = {
        name: sorted(round(a[1], 2) for a in got if a[1] > bound) for name, got in answers.items()
    }
    assert not any(late.values()), f"answers later than {bound} s: {late}"
    for name, got in answers.items():
        if name != "top":  # the most-read list is answered from its cache (at most 60 s old)
            assert any(a[2] == 503 for a in got), f"{name} never felt the pause"
        assert {a[2] for a in got} <= {200, 503}, (name, {a[2] for a in got})
        assert {a[3] for a in got if a[2] == 503} <= {"redis_unavailable"}, name
