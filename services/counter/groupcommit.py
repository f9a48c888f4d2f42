"""Group commit: requests taken within one event-loop turn leave Redis-bound together.

Hits that arrive in the same event-loop turn are sent together: still one round trip per hit
(fewer, in fact), and the loop does not pay redis-py's per-command overhead once per request.

Every request is answered within its deadline (VIEWCOUNTER_REDIS_TIMEOUT from the moment it
is taken, however long the queue ahead of it): one timer per batcher, not per request, fails
the requests whose deadline passed; the queue is bounded; and while Redis is known to be
unreachable, requests fail at once but for one probe every PROBE_INTERVAL_S (on a Cluster,
per node: only the calls to the node that failed).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from redis.asyncio.cluster import RedisCluster

from services.counter import calls, client, scripts
from services.counter.client import Client
from services.counter.errors import CounterUnavailable
from services.counter.outcomes import HitRequest, HitResult, hit_results
from services.counter.scripts import Call

# Hits leave in calls of at most HITS_PER_BATCH, up to PIPELINES_IN_FLIGHT calls at once. With
# no cap, the hits answered together come back together and leave together again: the api and
# Redis then take turns (the api idled ~22% under load); smaller calls, more of them in
# flight, keep both busy (measured when it was added: +13% hits/s at 64 connections).
PIPELINES_IN_FLIGHT = 4
HITS_PER_BATCH = 32
# Counts reads leave together the same way, at most this many a batch (the api lets a read
# name up to 100 pages: a counts.lua call then reads at most 1,600 pages).
COUNTS_PER_BATCH = 16
# Bounds how long one script call keeps Redis busy (about a microsecond per hit).
MAX_HITS_PER_CALL = 256
# A batcher queues at most this many full calls' worth of requests (hits: 32 x 4 x 8 = 1,024)
# beyond those out; past it a request is refused at once (503). While Redis answers, the queue
# holds the requests of one round trip; it grows only when Redis is slow or away, and then a
# request at the back would only wait out its deadline.
QUEUED_CALLS_PER_SLOT = 8
# While Redis is known unreachable (a call failed to connect or timed out), requests are
# refused at once but one every PROBE_INTERVAL_S (and none while the last one may still be out,
# up to its deadline): the first that succeeds lets traffic flow again.
PROBE_INTERVAL_S = 0.5
Q = TypeVar("Q")
A = TypeVar("A")


@dataclass(slots=True, eq=False)
class _Queued(Generic[Q, A]):
    request: Q
    future: asyncio.Future[A]
    deadline: float  # by the batcher's clock
    probe: bool = False  # let through while Redis was known unreachable


def _fail(items: Sequence[_Queued[Any, Any]], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


class GroupCommit(Generic[Q, A]):
    """Sends the requests taken within one event-loop turn together, as few script calls as
    they allow.

    Like a group commit: while PIPELINES_IN_FLIGHT batches are out, requests queue up and
    leave together (`per_batch` at most) when one returns, so under load a call carries many
    of them and the fixed cost of a round trip (and of redis-py's per-command work) is
    shared; when idle, a request leaves at once.
    """

    def __init__(
        self,
        redis: Client,
        per_batch: int,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._per_batch = per_batch
        self._timeout_s = timeout_s
        self._clock = clock
        self.max_queued = per_batch * PIPELINES_IN_FLIGHT * QUEUED_CALLS_PER_SLOT
        self._queue: deque[_Queued[Q, A]] = deque()  # taken, not sent yet
        # Every request not answered yet (queued or sent), oldest first: deadlines ascend, so
        # one timer, armed for the oldest, serves them all.
        self._waiting: deque[_Queued[Q, A]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._unreachable = False
        self._cluster = isinstance(redis, RedisCluster)
        # On a Cluster: node name -> until when its calls are refused (its last call failed).
        self._slow_nodes: dict[str, float] = {}
        self._probing = False  # a probe is queued or out
        self._next_probe = 0.0

    @property
    def unreachable(self) -> bool:
        """Whether the last call failed to reach Redis (requests then fail fast)."""
        return self._unreachable

    async def submit(self, request: Q) -> A:
        """Queue one request and wait for its answer; CounterUnavailable when Redis failed,
        is known unreachable, the queue is full, or no answer came within the timeout (a
        request that was sent then has an unknown outcome)."""
        now = self._clock()
        probe = False
        if self._unreachable:
            if self._probing or now < self._next_probe:
                raise CounterUnavailable("Redis is unreachable (the last call failed)")
            probe = self._probing = True  # this request probes; none beside it
        elif len(self._queue) >= self.max_queued:
            raise CounterUnavailable("too many requests waiting for Redis")
        loop = asyncio.get_running_loop()
        item: _Queued[Q, A] = _Queued(request, loop.create_future(), now + self._timeout_s, probe)
        self._queue.append(item)
        waiting = self._waiting
        while waiting and waiting[0].future.done():
            waiting.popleft()  # answered meanwhile (answers come back about in order)
        waiting.append(item)
        if self._timer is None:
            self._timer = loop.call_later(self._timeout_s, self._expire)
        self._schedule()
        return await item.future

    def _expire(self) -> None:
        """Fail the requests whose deadline passed (a late answer is then dropped: a hit sent
        may still count, the documented unknown outcome); arm for the next oldest."""
        self._timer = None
        now = self._clock()
        waiting = self._waiting
        while waiting and (waiting[0].future.done() or waiting[0].deadline <= now):
            item = waiting.popleft()
            if not item.future.done():
                item.future.set_exception(
                    CounterUnavailable("Redis did not answer within VIEWCOUNTER_REDIS_TIMEOUT")
                )
        if waiting:
            delay = max(waiting[0].deadline - now, 0.0)
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _schedule(self) -> None:
        if self._queue and not self._scheduled and len(self._tasks) < PIPELINES_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        now = self._clock()
        batch: list[_Queued[Q, A]] = []
        queue = self._queue
        while queue and len(batch) < self._per_batch:
            item = queue.popleft()
            if item.deadline <= now:  # answered 503 (or about to be): never sent
                self._probing &= not item.probe
                if not item.future.done():
                    item.future.set_exception(
                        CounterUnavailable("Redis did not answer within VIEWCOUNTER_REDIS_TIMEOUT")
                    )
                continue
            # A cancelled caller's request still leaves, as it was taken: its answer is lost,
            # not the hit.
            batch.append(item)
        if batch:
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._sent)
        self._schedule()  # the rest, if a call may still leave

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._schedule()

    def _reached(self, reached: bool) -> None:
        """Record whether the last call reached Redis; when it did not, fail the requests
        still queued (none was sent: nothing applied) and refuse new ones but the probes."""
        if reached:
            self._unreachable = False
            return
        self._unreachable = True
        self._next_probe = self._clock() + PROBE_INTERVAL_S
        queued, self._queue = list(self._queue), deque()
        if self._probing and any(item.probe for item in queued):
            self._probing = False
        _fail(queued, CounterUnavailable("Redis is unreachable (a call failed)"))

    async def _send(self, batch: list[_Queued[Q, A]]) -> None:
        try:
            await self._send_batch(batch)
        except Exception as exc:
            # A bug must fail its requests, never leave them waiting forever.
            _fail(batch, exc)
            raise
        finally:
            if self._probing and any(item.probe for item in batch):
                self._probing = False  # the probe is back: the next may leave in turn

    async def _send_batch(self, batch: list[_Queued[Q, A]]) -> None:
        raise NotImplementedError

    async def _run_calls(
        self, chunks: Sequence[list[_Queued[Q, A]]], call_list: Sequence[Call]
    ) -> list[Any]:
        """Run one call per chunk; a chunk whose call failed is failed (its result None)."""
        if self._cluster:
            return await self._run_cluster_calls(chunks, call_list)
        try:
            results, _ = await scripts.run_scripts(self._redis, call_list)
        except client.CLIENT_ERRORS as exc:
            for chunk in chunks:
                _fail(chunk, client.unavailable(exc))
            if isinstance(exc, client.UNREACHABLE_ERRORS):
                self._reached(False)
            return [None] * len(chunks)
        self._reached(True)
        for i, (chunk, result) in enumerate(zip(chunks, results, strict=True)):
            if isinstance(result, Exception):
                _fail(chunk, client.unavailable(result))
                results[i] = None
        return results

    async def _run_cluster_calls(
        self, chunks: Sequence[list[_Queued[Q, A]]], call_list: Sequence[Call]
    ) -> list[Any]:
        """On a Cluster, fail-fast per node: a call to a node whose last call did not reach
        it (down, or slower than the timeout) is refused without being sent (nothing
        applied), but for one probe every PROBE_INTERVAL_S; other nodes' calls go as usual.
        So a slow node does not hold the calls in flight (and the hits of other nodes that
        share their batches) for a timeout each."""
        now = self._clock()
        nodes = [self._node_of(call) for call in call_list]
        results: list[Any] = [None] * len(chunks)
        send: list[int] = []
        for i, node in enumerate(nodes):
            until = self._slow_nodes.get(node)
            if until is not None:
                if now < until:
                    _fail(chunks[i], CounterUnavailable(f"Redis node {node} is unreachable"))
                    continue
                self._slow_nodes[node] = now + PROBE_INTERVAL_S  # this call probes it
            send.append(i)
        if not send:
            return results
        try:
            answers, _ = await scripts.run_scripts(self._redis, [call_list[i] for i in send])
        except client.CLIENT_ERRORS as exc:  # one call alone: its error arrives here
            for i in send:
                _fail(chunks[i], client.unavailable(exc))
                if isinstance(exc, client.UNREACHABLE_ERRORS):
                    self._slow_nodes[nodes[i]] = self._clock() + PROBE_INTERVAL_S
            return results
        for i, answer in zip(send, answers, strict=True):
            if isinstance(answer, Exception):
                _fail(chunks[i], client.unavailable(answer))
                if isinstance(answer, client.UNREACHABLE_ERRORS):
                    self._slow_nodes[nodes[i]] = self._clock() + PROBE_INTERVAL_S
            else:
                self._slow_nodes.pop(nodes[i], None)
                results[i] = answer
        return results

    def _node_of(self, call: Call) -> str:
        """The name of the Cluster node holding the call's first key (its slot when the
        client does not know the node yet)."""
        key = call[2][0]
        cluster = cast(RedisCluster, self._redis)
        try:
            node = cluster.get_node_from_key(key)
        except client.CLIENT_ERRORS:  # the slots are not known yet (first call): by slot
            node = None
        return str(node.name) if node is not None else f"slot {cluster.keyslot(key)}"

    async def drain(self) -> None:
        """Wait for the calls in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._waiting and self._waiting[0].future.done():
            self._waiting.popleft()
        if self._timer is not None and not self._waiting:
            self._timer.cancel()
            self._timer = None


class HitBatcher(GroupCommit[HitRequest, HitResult | None]):
    """Hits, HITS_PER_BATCH at most a batch, one hits.lua call per unit of a site in it.
    A hit is answered None when its unit is not loaded (nothing was written)."""

    def __init__(
        self,
        redis: Client,
        units: int,
        timeout_s: float,
        online_window_s: int = calls.ONLINE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(redis, HITS_PER_BATCH, timeout_s, clock)
        self._units = units
        self._online_window_s = online_window_s

    async def _send_batch(self, batch: list[_Queued[HitRequest, HitResult | None]]) -> None:
        groups: dict[str, list[_Queued[HitRequest, HitResult | None]]] = {}
        for item in batch:
            unit = calls.unit_of(item.request.site, item.request.page, self._units)
            groups.setdefault(unit, []).append(item)
        chunks = [
            (unit, items[i : i + MAX_HITS_PER_CALL])
            for unit, items in groups.items()
            for i in range(0, len(items), MAX_HITS_PER_CALL)
        ]
        call_list = [
            calls.hits_call(
                unit,
                [item.request for item in chunk],
                self._units,
                online_window_s=self._online_window_s,
                per_slot=self._cluster,  # the work index per Cluster slot
            )
            for unit, chunk in chunks
        ]
        answers = await self._run_calls([chunk for _, chunk in chunks], call_list)
        for (_, chunk), answer in zip(chunks, answers, strict=True):
            if answer is None:
                continue
            results = hit_results(answer)
            for i, item in enumerate(chunk):
                if not item.future.done():  # else the request went away; its hit still counted
                    item.future.set_result(None if results is None else results[i])


@dataclass(frozen=True, slots=True)
class CountsRequest:
    """A read of one unit's part of the site total and of some of its pages on `day`."""

    unit: str
    day: str
    pages: Sequence[str]


# The answer of a counts read of one unit: None when the unit is not loaded, else its part
# of the site total, its visitors sketch's count, and each page's (views, visitors).
UnitCounts = tuple[int, int, dict[str, tuple[int, int]]] | None


class CountsBatcher(GroupCommit[CountsRequest, UnitCounts]):
    """Reads of live totals, COUNTS_PER_BATCH at most a batch: the reads of one unit and day
    in a batch share one counts.lua call (their pages together, each page once)."""

    def __init__(
        self, redis: Client, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(redis, COUNTS_PER_BATCH, timeout_s, clock)

    async def _send_batch(self, batch: list[_Queued[CountsRequest, UnitCounts]]) -> None:
        groups: dict[tuple[str, str], list[_Queued[CountsRequest, UnitCounts]]] = {}
        for item in batch:
            groups.setdefault((item.request.unit, item.request.day), []).append(item)
        chunks: list[list[_Queued[CountsRequest, UnitCounts]]] = []
        call_list: list[Call] = []
        pages_of_call: list[list[str]] = []
        for (unit, day), items in groups.items():
            pages = list(dict.fromkeys(p for item in items for p in item.request.pages))
            chunks.append(items)
            call_list.append(calls.counts_call(unit, day, pages))
            pages_of_call.append(pages)
        results = await self._run_calls(chunks, call_list)
        for items, pages, result in zip(chunks, pages_of_call, results, strict=True):
            if result is None:
                continue
            answer: UnitCounts = None
            if result[0] != 0:
                per_page = {
                    page: (int(views), int(visitors))
                    for page, views, visitors in zip(pages, result[3::2], result[4::2], strict=True)
                }
                answer = (int(result[1]), int(result[2]), per_page)
            for item in items:
                if not item.future.done():
                    item.future.set_result(answer)


# A batch's stats reads (group commit, as counts reads): identical reads share one call.
STATS_PER_BATCH = 64
# A stats.lua call as a hashable key: (unit, minutes, days).
StatsCall = tuple[str, tuple[int, ...], tuple[str, ...]]


class StatsBatcher(GroupCommit[StatsCall, list[Any] | None]):
    """Stats reads of a site of one unit, STATS_PER_BATCH at most a batch: the same read
    taken while a call is out (many pages of one busy site) leaves once and is answered to
    all; its answer, or None when it failed (the request then got the error)."""

    def __init__(
        self, redis: Client, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(redis, STATS_PER_BATCH, timeout_s, clock)

    async def _send_batch(self, batch: list[_Queued[StatsCall, list[Any] | None]]) -> None:
        groups: dict[StatsCall, list[_Queued[StatsCall, list[Any] | None]]] = {}
        for item in batch:
            groups.setdefault(item.request, []).append(item)
        chunks = list(groups.values())
        call_list = [calls.stats_call(*read) for read in groups]
        for items, answer in zip(chunks, await self._run_calls(chunks, call_list), strict=True):
            for item in items:
                if answer is not None and not item.future.done():
                    item.future.set_result(answer)
