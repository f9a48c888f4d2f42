"""The flusher's Prometheus metrics, in a registry of their own.

Only the flusher imports this module, so the api's scrape never shows flusher series. The
registry also holds the Redis/Postgres error counters both processes share (services.metrics)
and the usual process metrics.

Flush lag. `viewcounter_flush_lag_seconds` is the time since the *start* of this flusher's
last successful pass. A pass moves every hit that was pending when it started (they are all
in Redis before its scan, and it snapshots every site it found), so no hit older than the lag
is still unflushed in the sites this flusher holds: the lag is an upper bound on the age of
the oldest unflushed hit. When hits flow and Postgres keeps up it stays between 0 and one
interval plus one pass; when passes fail it grows with the wall clock. Before this flusher's
first successful pass it is the time since the flusher started (hits left by a predecessor
may be older).
"""

from __future__ import annotations

import contextlib
import time
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)

from services import metrics

REGISTRY: Final = CollectorRegistry()
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)
for _shared in (metrics.REDIS_ERRORS, metrics.POSTGRES_ERRORS):
    REGISTRY.register(_shared)

PASS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

FLUSHED_HITS = Counter(
    "viewcounter_flushed_hits_total", "Hits committed to Postgres", registry=REGISTRY
)
FLUSHED_BATCHES = Counter(
    "viewcounter_flushed_batches_total", "Batches committed to Postgres", registry=REGISTRY
)
FLUSHED_ROWS = Counter(
    "viewcounter_flushed_rows_total",
    "(site, page, day) rows written by committed batches",
    registry=REGISTRY,
)
FLUSH_FAILURES = Counter(
    "viewcounter_flush_failures_total", "Flush passes that failed", registry=REGISTRY
)
CONSECUTIVE_FAILURES = Gauge(
    "viewcounter_flush_consecutive_failures",
    "Flush passes failed in a row (0 after a success); from 3 the flusher's /readyz answers 503",
    registry=REGISTRY,
)
DISCARDED_HITS = Counter(
    "viewcounter_discarded_hits_total",
    "Hits of batches dropped because Redis lost and refilled the site meanwhile",
    registry=REGISTRY,
)
REPLAYED_BATCHES = Counter(
    "viewcounter_replayed_batches_total",
    "Batches frozen by an earlier pass (this flusher's failed one, or a dead flusher's) and "
    "finished by a later one: applied then, or found already in the ledger and cleaned up",
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "viewcounter_flush_last_success_timestamp_seconds",
    "When a flush pass last succeeded (unix time; 0 before the first)",
    registry=REGISTRY,
)
FLUSH_DURATION = Histogram(
    "viewcounter_flush_duration_seconds",
    "Duration of flush passes, by result (ok, failed)",
    ["result"],
    buckets=PASS_BUCKETS,
    registry=REGISTRY,
)
FLUSH_LAG = Gauge(
    "viewcounter_flush_lag_seconds",
    "Upper bound on the age of the oldest hit not yet in Postgres: seconds since the start "
    "of the last successful pass (or since start-up before the first)",
    registry=REGISTRY,
)
FLUSH_INTERVAL = Gauge(
    "viewcounter_flush_interval_seconds",
    "The configured VIEWCOUNTER_FLUSH_INTERVAL (alerts compare the lag with it)",
    registry=REGISTRY,
)
PENDING_SITES = Gauge(
    "viewcounter_pending_sites",
    "Units of sites (a site has VIEWCOUNTER_SHARDS) in the work index (unflushed hits or "
    "learned titles) at the last pass",
    registry=REGISTRY,
)
SNAPSHOT_KEYS = Gauge(
    "viewcounter_snapshot_keys",
    "Frozen snapshot keys (batches not yet deleted after COMMIT) in the snapshots index at "
    "the last pass",
    registry=REGISTRY,
)

NODE_LAG = Gauge(
    "viewcounter_flush_node_lag_seconds",
    "Per Redis node (a Cluster primary; a single Redis is one node): seconds since the start "
    "of the last pass that flushed every unit of the node this flusher holds; it grows only "
    "for a node that is down or slow while the others' stays low",
    ["node"],
    registry=REGISTRY,
)
OLDEST_UNFLUSHED = Gauge(
    "viewcounter_oldest_unflushed_seconds",
    "Per Redis node, read from Redis itself at scrape time (its work index and Redis' "
    "clock, not any flusher's bookkeeping): the age of the oldest unit with hits not yet in "
    "Postgres (0: none); no sample for a node that did not answer",
    ["node"],
    registry=REGISTRY,
)

_flushed_through = time.time()  # every hit before this is in Postgres (or, at start, unknown)
_started = _flushed_through
_node_flushed: dict[str, float] = {}


def pass_succeeded(started_at: float, finished_at: float) -> None:
    """A pass that ran from `started_at` to `finished_at` (unix times) succeeded."""
    global _flushed_through
    _flushed_through = max(_flushed_through, started_at)
    LAST_SUCCESS.set(finished_at)
    FLUSH_DURATION.labels("ok").observe(max(0.0, finished_at - started_at))


def pass_failed(exc: BaseException, duration_s: float) -> None:
    """A pass failed with `exc`."""
    metrics.count_backend_error(exc)
    FLUSH_DURATION.labels("failed").observe(duration_s)


def found_work(pending_sites: int, snapshot_keys: int) -> None:
    """What the pass found in the work index."""
    PENDING_SITES.set(pending_sites)
    SNAPSHOT_KEYS.set(snapshot_keys)


def node_flushed(node: str, started_at: float) -> None:
    """A pass that started at `started_at` flushed every held unit of `node`."""
    _node_flushed[node] = max(_node_flushed.get(node, _started), started_at)


def node_lags(now: float | None = None) -> dict[str, float]:
    """Per node, seconds since the start of the last pass that flushed all its held units."""
    now = time.time() if now is None else now
    return {node: max(0.0, now - since) for node, since in _node_flushed.items()}


def unflushed_ages(ages: dict[str, float | None]) -> None:
    """The age of the oldest unflushed unit per node, as just read from Redis (None: the
    node did not answer: its sample is dropped until it does)."""
    for node, age in ages.items():
        if age is None:
            with contextlib.suppress(KeyError):
                OLDEST_UNFLUSHED.remove(node)
        else:
            OLDEST_UNFLUSHED.labels(node).set(age)


def flush_lag_s(now: float | None = None) -> float:
    """The current flush lag (see the module docstring)."""
    return max(0.0, (time.time() if now is None else now) - _flushed_through)


def exposition() -> bytes:
    """The flusher's metrics in Prometheus text format, the lag computed now."""
    now = time.time()
    FLUSH_LAG.set(flush_lag_s(now))
    for node, lag in node_lags(now).items():
        NODE_LAG.labels(node).set(lag)
    return metrics.exposition(REGISTRY)
