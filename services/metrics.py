"""The api's Prometheus metrics, the Redis/Postgres error counters both processes share, and
their exposition, also across several uvicorn workers.

Several workers: prometheus-client's multiprocess mode. `PROMETHEUS_MULTIPROC_DIR` must be in
the environment before prometheus_client is first imported in a worker (`viewcounter api
--workers N` sets it, see services/cli/main.py); each worker then writes its values to its own
files there and a scrape, whichever worker answers it, merges all of them. Counters of a
worker that died stay in the sum (totals never go backwards); live gauges of a dead worker
are dropped at the next scrape.

Label values are bounded: sites are registered by an admin (a hit for an unknown site is
refused before it is counted; a refused hit names its site only when it is registered),
routes are route templates, methods and statuses are folded into short fixed
sets. A page id is never a label.

The flusher's own metrics live in services/flusher/metrics.py: the api never creates them, so
its scrape does not show flusher series (and the other way round).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from services.counter.errors import CounterUnavailable
from services.counter.outcomes import RedisMemory, RedisPersistence
from services.db import errors as db_errors

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Read once, like prometheus_client itself does at import: the value class of every metric of
# this process was chosen then.
MULTIPROC_DIR: Final = os.environ.get(MULTIPROC_ENV) or None
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# The site label of `rejected` hits whose site is not a registered one (or could not be looked
# up): keeps attacker-chosen site ids out of the labels.
OTHER_SITE: Final = "_other"
# Request latency buckets (seconds): a hit takes a few milliseconds; streams up to ~20 s.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# _created series double the output and nothing here needs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

HITS = Counter(
    "viewcounter_hits_total",
    "Page views received on the hit routes, by site and outcome (counted, duplicate, bot, "
    "rate_limited, page_limit, unknown_page, rejected = answered 4xx/5xx)",
    ["site", "outcome"],
)
REQUEST_DURATION = Histogram(
    "viewcounter_http_request_duration_seconds",
    "Time from request to the end of the answer, by route template, method and status class",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
REDIS_ERRORS = Counter(
    "viewcounter_redis_errors_total",
    "Redis calls that failed (unreachable, loading, full, timed out)",
)
POSTGRES_ERRORS = Counter(
    "viewcounter_postgres_errors_total",
    "Postgres calls that failed (unreachable, timed out, refused)",
)
REDIS_USED = Gauge(
    "viewcounter_redis_memory_used_bytes",
    "Memory Redis uses (INFO used_memory), as of the last scrape or readiness probe",
    multiprocess_mode="livemostrecent",
)
REDIS_MAX = Gauge(
    "viewcounter_redis_memory_max_bytes",
    "Redis' maxmemory bound; 0 when none is set",
    multiprocess_mode="livemostrecent",
)
REDIS_PERSISTENCE_OK = Gauge(
    "viewcounter_redis_persistence_ok",
    "1 while Redis can write its append-only file (and RDB saves succeed); 0 while it refuses "
    "every write (MISCONF: a full or read-only disk), as of the last scrape or readiness probe",
    multiprocess_mode="livemostrecent",
)
OPEN_STREAMS = Gauge(
    "viewcounter_streams_open",
    "Server-Sent Events streams open now",
    multiprocess_mode="livesum",
)
POLLERS = Gauge(
    "viewcounter_stream_pollers",
    "(site, page) pairs polled for open streams",
    multiprocess_mode="livesum",
)
REFUSED_STREAMS = Counter(
    "viewcounter_streams_refused",
    "Streams refused because the process had its maximum open",
)

_hit_children: dict[tuple[str, str], Counter] = {}


def count_hit(site: str, outcome: str) -> None:
    """Count one hit of a registered `site` with `outcome`."""
    child = _hit_children.get((site, outcome))
    if child is None:
        child = _hit_children[(site, outcome)] = HITS.labels(site, outcome)
    child.inc()


def count_rejected_hit(site: str | None) -> None:
    """Count a hit answered 4xx/5xx: `site` when it is a registered site, else None."""
    count_hit(OTHER_SITE if site is None else site, "rejected")


def count_backend_error(exc: BaseException) -> None:
    """Count `exc` as a Redis or a Postgres error when it is one."""
    if isinstance(exc, CounterUnavailable):
        REDIS_ERRORS.inc()
    elif isinstance(exc, db_errors.DatabaseUnavailable):
        POSTGRES_ERRORS.inc()


def set_redis_memory(memory: RedisMemory) -> None:
    """Publish Redis' memory use and bound."""
    REDIS_USED.set(memory.used_bytes)
    REDIS_MAX.set(memory.max_bytes)


def set_redis_persistence(persistence: RedisPersistence) -> None:
    """Publish whether Redis can persist (and so accepts) writes."""
    REDIS_PERSISTENCE_OK.set(1 if persistence.writes_accepted else 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(path: str) -> None:
    """Drop live gauges of worker processes that no longer exist (their counters stay)."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = Path(name).stem.rpartition("_")[2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            prom_multiprocess.mark_process_dead(int(pid), path)  # type: ignore[no-untyped-call]


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """This process's metrics in Prometheus text format; with several workers, all of theirs."""
    if MULTIPROC_DIR is None or registry is not REGISTRY:
        return generate_latest(registry)
    forget_dead_workers(MULTIPROC_DIR)
    merged = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(merged, MULTIPROC_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(merged)
