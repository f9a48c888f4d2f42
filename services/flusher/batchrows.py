"""Reading a batch's snapshots from Redis as a stream of row chunks for Postgres."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from typing import Any

from services.counter.flushstore import FlushStore
from services.counter.snapshots import SnapshotRef
from services.db import ledger as db_ledger

ESTIMATES_IN_FLIGHT = 2  # chunks whose visitor estimates are being read at once

# Adds the visitor estimates to a chunk of rows (site, page, day) and their hits.
Estimator = Callable[
    [list[tuple[str, str, str]], list[int]], Coroutine[Any, Any, list[db_ledger.DailyRow]]
]


async def read_chunks(
    store: FlushStore,
    refs: Sequence[SnapshotRef],
    estimate: Estimator,
    chunk_rows: int,
    tally: dict[str, int] | None = None,
) -> AsyncGenerator[list[db_ledger.DailyRow]]:
    """The rows of snapshots, `chunk_rows` at a time (HSCAN), each chunk with its pages'
    visitor estimates (`estimate`: one pipelined read per chunk); `tally` adds up the hits
    read per unit."""
    # Chunks' estimates are read while the next chunks are scanned (and the one before goes
    # to Postgres), so Redis and this process both keep working: at most
    # ESTIMATES_IN_FLIGHT + 1 chunks are in hand.
    estimating: collections.deque[asyncio.Task[list[db_ledger.DailyRow]]] = collections.deque()
    try:
        rows: list[tuple[str, str, str]] = []
        hits: list[int] = []
        async for ref, page_rows in store.read_snapshots(refs):
            for site, page, day, n in page_rows:
                rows.append((site, page, day))
                hits.append(n)
                if tally is not None:
                    tally[ref.unit] = tally.get(ref.unit, 0) + n
                if len(rows) >= chunk_rows:
                    if len(estimating) >= ESTIMATES_IN_FLIGHT:
                        yield await estimating.popleft()
                    estimating.append(asyncio.create_task(estimate(rows, hits)))
                    rows, hits = [], []
        if rows:
            estimating.append(asyncio.create_task(estimate(rows, hits)))
        while estimating:
            yield await estimating.popleft()
    finally:
        for task in estimating:  # the reading stopped early: no orphan task
            task.cancel()
        if estimating:
            await asyncio.wait(estimating)
        for task in estimating:
            if not task.cancelled():
                task.exception()  # the error that matters is the one in flight


async def chained(
    first: list[db_ledger.DailyRow], rest: AsyncGenerator[list[db_ledger.DailyRow]]
) -> AsyncGenerator[list[db_ledger.DailyRow]]:
    """`first`, then what `rest` yields."""
    yield first
    async for chunk in rest:
        yield chunk
