"""Group commit: requests taken within one event-loop turn leave Redis-bound together.

Hits that arrive in the same event-loop turn are sent together: still one round trip per hit
(fewer, in fact), and the loop does not pay redis-py's per-command overhead once per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.counter import calls, client, scripts
from services.counter.client import Client
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
Q = TypeVar("Q")
A = TypeVar("A")


@dataclass(slots=True)
class _Queued(Generic[Q, A]):
    request: Q
    future: asyncio.Future[A]


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

    def __init__(self, redis: Client, per_batch: int) -> None:
        self._redis = redis
        self._per_batch = per_batch
        self._queue: list[_Queued[Q, A]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Q) -> A:
        """Queue one request and wait for its answer."""
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(request, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._queue and not self._scheduled and len(self._tasks) < PIPELINES_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue[: self._per_batch], self._queue[self._per_batch :]
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)
        self._schedule()  # the rest, if a call may still leave

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._schedule()

    async def _send(self, batch: list[_Queued[Q, A]]) -> None:
        try:
            await self._send_batch(batch)
        except Exception as exc:
            # A bug must fail its requests, never leave them waiting forever.
            _fail(batch, exc)
            raise

    async def _send_batch(self, batch: list[_Queued[Q, A]]) -> None:
        raise NotImplementedError

    async def _run_calls(
        self, chunks: Sequence[list[_Queued[Q, A]]], call_list: Sequence[Call]
    ) -> list[Any]:
        """Run one call per chunk; a chunk whose call failed is failed (its result None)."""
        try:
            results, _ = await scripts.run_scripts(self._redis, call_list)
        except client.CLIENT_ERRORS as exc:
            for chunk in chunks:
                _fail(chunk, client.unavailable(exc))
            return [None] * len(chunks)
        for i, (chunk, result) in enumerate(zip(chunks, results, strict=True)):
            if isinstance(result, Exception):
                _fail(chunk, client.unavailable(result))
                results[i] = None
        return results

    async def drain(self) -> None:
        """Wait for the calls in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class HitBatcher(GroupCommit[HitRequest, HitResult | None]):
    """Hits, HITS_PER_BATCH at most a batch, one hits.lua call per unit of a site in it.
    A hit is answered None when its unit is not loaded (nothing was written)."""

    def __init__(
        self, redis: Client, units: int, online_window_s: int = calls.ONLINE_WINDOW_S
    ) -> None:
        super().__init__(redis, HITS_PER_BATCH)
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

    def __init__(self, redis: Client) -> None:
        super().__init__(redis, COUNTS_PER_BATCH)

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

    def __init__(self, redis: Client) -> None:
        super().__init__(redis, STATS_PER_BATCH)

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
