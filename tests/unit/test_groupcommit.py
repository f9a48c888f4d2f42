"""The group commit's bounds, driven by a fake clock and a fake Redis (no server): a request's
deadline runs from submit, the queue is bounded, and an unreachable Redis fails requests fast
but for one probe at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from services.counter import groupcommit, scripts
from services.counter.errors import CounterUnavailable
from services.counter.groupcommit import PIPELINES_IN_FLIGHT, PROBE_INTERVAL_S, GroupCommit

pytestmark = pytest.mark.unit

TIMEOUT_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRedis:
    """Answers EVALSHA with its last argument once released; or fails as told."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None
        self.errors: dict[str, Exception] = {}  # by request, raised once the gate opens
        self.finished = 0

    async def evalsha(self, sha: str, numkeys: int, *argv: Any) -> Any:
        self.sent.append(argv[-1])
        if self.error is not None:
            raise self.error
        await self.gate.wait()
        if argv[-1] in self.errors:
            raise self.errors[argv[-1]]
        self.finished += 1
        return f"answer:{argv[-1]}"


class Echo(GroupCommit[str, str]):
    """One request a call, answered with what Redis answered."""

    async def _send_batch(self, batch: Sequence[Any]) -> None:
        calls = [(scripts.HITS, 0, [item.request]) for item in batch]
        for item, answer in zip(
            batch, await self._run_calls([[i] for i in batch], calls), strict=True
        ):
            if answer is not None and not item.future.done():
                item.future.set_result(answer)


def batcher(redis: FakeRedis, clock: FakeClock, timeout_s: float = TIMEOUT_S) -> Echo:
    return Echo(redis, 1, timeout_s, clock)  # type: ignore[arg-type]


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_request_answered_in_time_gets_its_answer() -> None:
    echo = batcher(FakeRedis(), FakeClock())
    assert await echo.submit("a") == "answer:a"
    await echo.drain()


async def test_a_queued_request_past_its_deadline_is_refused_and_never_sent() -> None:
    redis, clock = FakeRedis(), FakeClock()
    redis.gate.clear()
    echo = batcher(redis, clock)
    out = [asyncio.create_task(echo.submit(f"out{i}")) for i in range(PIPELINES_IN_FLIGHT)]
    await turns()
    queued = asyncio.create_task(echo.submit("queued"))
    await turns()
    assert len(redis.sent) == PIPELINES_IN_FLIGHT  # every call slot taken: it waits
    clock.now += TIMEOUT_S  # its deadline, counted from submit, passes in the queue
    redis.gate.set()
    with pytest.raises(CounterUnavailable, match="REDIS_TIMEOUT"):
        await queued
    assert [await task for task in out] == [f"answer:out{i}" for i in range(PIPELINES_IN_FLIGHT)]
    assert "queued" not in redis.sent
    await echo.drain()


async def test_a_waiting_request_gives_up_at_its_deadline_and_the_late_answer_is_dropped() -> None:
    redis = FakeRedis()
    redis.gate.clear()  # Redis never answers in time
    echo = Echo(redis, 1, 0.05)  # type: ignore[arg-type]  # the real clock
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CounterUnavailable, match="REDIS_TIMEOUT"):
        await echo.submit("slow")
    assert 0.05 <= loop.time() - started < 0.5
    # Giving up did not cancel the shared call: it finishes when Redis answers, and its
    # answer (the hit may have counted: unknown outcome) goes nowhere.
    assert redis.sent == ["slow"] and redis.finished == 0
    redis.gate.set()
    await echo.drain()
    assert redis.finished == 1


async def test_over_the_queue_bound_a_request_is_refused_at_once() -> None:
    redis, clock = FakeRedis(), FakeClock()
    redis.gate.clear()
    echo = batcher(redis, clock)
    waiting = [asyncio.create_task(echo.submit(f"out{i}")) for i in range(PIPELINES_IN_FLIGHT)]
    await turns()  # the calls leave, every slot taken
    waiting += [asyncio.create_task(echo.submit(f"q{i}")) for i in range(echo.max_queued)]
    await turns()
    assert echo.max_queued == groupcommit.QUEUED_CALLS_PER_SLOT * PIPELINES_IN_FLIGHT
    with pytest.raises(CounterUnavailable, match="too many"):
        await echo.submit("one too many")
    redis.gate.set()
    answers = await asyncio.gather(*waiting)
    assert len(answers) == len(waiting)
    assert "one too many" not in redis.sent
    await echo.drain()


async def test_an_unreachable_redis_fails_requests_fast_and_one_probe_finds_it_back() -> None:
    redis, clock = FakeRedis(), FakeClock()
    echo = batcher(redis, clock)
    redis.error = redis_errors.ConnectionError("refused")
    with pytest.raises(CounterUnavailable, match="refused"):
        await echo.submit("first")
    assert echo.unreachable
    with pytest.raises(CounterUnavailable, match="unreachable"):
        await echo.submit("fast")
    assert redis.sent == ["first"]  # refused without being sent
    clock.now += PROBE_INTERVAL_S
    with pytest.raises(CounterUnavailable, match="refused"):
        await echo.submit("probe 1")  # the probe goes out, Redis still away
    clock.now += PROBE_INTERVAL_S
    redis.error = None
    redis.gate.clear()
    probe = asyncio.create_task(echo.submit("probe 2"))
    await turns()
    with pytest.raises(CounterUnavailable, match="unreachable"):
        await echo.submit("beside the probe")  # one probe at a time
    redis.gate.set()
    assert await probe == "answer:probe 2"
    assert not echo.unreachable
    assert await echo.submit("flows again") == "answer:flows again"
    assert redis.sent == ["first", "probe 1", "probe 2", "flows again"]
    await echo.drain()


async def test_a_call_timing_out_fails_the_queued_requests_without_sending_them() -> None:
    redis, clock = FakeRedis(), FakeClock()
    redis.gate.clear()
    redis.errors["out0"] = redis_errors.TimeoutError("Timeout reading from socket")
    echo = batcher(redis, clock)
    out = [asyncio.create_task(echo.submit(f"out{i}")) for i in range(PIPELINES_IN_FLIGHT)]
    await turns()
    queued = [asyncio.create_task(echo.submit(f"q{i}")) for i in range(10)]
    await turns()
    redis.gate.set()
    with pytest.raises(CounterUnavailable, match="in time"):
        await out[0]
    for task in queued:
        with pytest.raises(CounterUnavailable, match="unreachable"):
            await task
    assert not [name for name in redis.sent if name.startswith("q")]
    # The calls already out were answered: they reached Redis, which is no longer refused.
    assert [await task for task in out[1:]] == [f"answer:out{i}" for i in range(1, 4)]
    assert not echo.unreachable
    await echo.drain()


class FakeNode:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeCluster(FakeRedis, RedisCluster):  # type: ignore[misc]
    """A Cluster's client as the group commit sees it: a request "a:…" lives on node a."""

    def __init__(self) -> None:
        FakeRedis.__init__(self)

    def get_node_from_key(self, key: str, replica: bool = False) -> FakeNode:
        return FakeNode(key.split(":")[0])

    def keyslot(self, key: str) -> int:
        return 0


async def test_on_a_cluster_a_node_that_failed_is_refused_fast_but_the_others_flow() -> None:
    redis, clock = FakeCluster(), FakeClock()
    echo = Echo(redis, 1, TIMEOUT_S, clock)
    redis.errors["a:1"] = redis_errors.TimeoutError("Timeout reading from socket")
    with pytest.raises(CounterUnavailable, match="in time"):
        await echo.submit("a:1")
    with pytest.raises(CounterUnavailable, match="node a is unreachable"):
        await echo.submit("a:2")  # refused without being sent: nothing applied
    assert await echo.submit("b:1") == "answer:b:1"  # another node: no fail-fast
    assert not echo.unreachable
    clock.now += PROBE_INTERVAL_S
    assert await echo.submit("a:3") == "answer:a:3"  # the probe finds node a back
    assert await echo.submit("a:4") == "answer:a:4"
    assert redis.sent == ["a:1", "b:1", "a:3", "a:4"]
    await echo.drain()
