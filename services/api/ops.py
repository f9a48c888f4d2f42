"""Liveness, readiness and metrics: what the public port answers (/healthz, a bare /readyz)
and what the metrics listener (ops_listener.py) serves in full (/readyz checks, /metrics)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from services import health, metrics
from services.api.deps import AppState
from services.config import Settings
from services.counter import client, startup
from services.counter.client import Client
from services.counter.errors import CounterUnavailable
from services.counter.outcomes import RedisMemory, RedisPersistence
from services.db.pool import Pool

# Readiness warns (and ops should act) once Redis uses this share of its maxmemory: with
# noeviction, Redis refuses every hit when it is full.
REDIS_MEMORY_WARN_RATIO = 0.8
WARNING = "warning"

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """The process answers."""
    return JSONResponse({"status": "ok"})


def memory_check(memory: RedisMemory) -> str:
    """Either "ok" or a warning naming how full Redis is."""
    if memory.ratio is None:
        return "ok (no maxmemory set: Redis may grow until the machine runs out of memory)"
    if memory.ratio >= REDIS_MEMORY_WARN_RATIO:
        return (
            f"warning: Redis uses {memory.ratio:.0%} of its maxmemory "
            f"({memory.used_bytes} of {memory.max_bytes} bytes); hits are refused when full"
        )
    return "ok"


def persistence_check(persistence: RedisPersistence) -> str:
    """"ok", "failed: …" when Redis refuses writes because it cannot persist them, or
    "warning: …" when only its last AOF rewrite failed (a disk filling up)."""
    if not persistence.aof_write_ok:
        return (
            "failed: redis_persistence_failed: Redis cannot write its append-only file "
            "(disk full or read-only?) and refuses every hit (MISCONF) until it can"
        )
    if not persistence.rdb_save_ok:
        return (
            "failed: redis_persistence_failed: Redis' last RDB save failed and it refuses "
            "every hit (MISCONF, stop-writes-on-bgsave-error) until a save succeeds"
        )
    if not persistence.aof_rewrite_ok:
        return "warning: Redis' last append-only file rewrite failed (disk filling up?)"
    return "ok"


# What hits need: a check of these failing takes the api out of a load balancer (503).
HIT_CHECKS = ("redis", "redis_eviction", "redis_layout", "redis_persistence")
# What admin routes, reports and imports also need: failing, the api is "degraded" (200).
POSTGRES_CHECKS = ("postgres", "migrations")


def readiness_status(checks: dict[str, str]) -> tuple[str, int]:
    """The api's readiness from its checks: ("unavailable", 503) when hits cannot be counted;
    else ("degraded", 200) when Postgres is unreachable or behind; else ("warning", 200) when
    Redis is near its memory bound or its last AOF rewrite failed; else ("ok", 200)."""
    if any(_failing(checks[name]) for name in HIT_CHECKS):
        return "unavailable", 503
    if any(checks[name] != health.OK for name in POSTGRES_CHECKS):
        return "degraded", 200
    if any(checks[name].startswith(WARNING) for name in ("redis_memory", "redis_persistence")):
        return "warning", 200
    return "ok", 200


def _failing(check: str) -> bool:
    return check != health.OK and not check.startswith(WARNING)


async def readiness(
    redis: Client, pool: Pool, settings: Settings
) -> tuple[str, int, dict[str, str]]:
    """(status, HTTP status, checks) of this api: whether it can count hits (Redis answers,
    cannot evict counts, can persist writes — its AOF disk is not full — and holds them split
    over VIEWCOUNTER_SHARDS units), and how Postgres and Redis' memory are (see
    `readiness_status`). Postgres is not needed by hits: unreachable, or with migrations
    missing, the api stays ready (200) with status "degraded"."""
    probe = await health.probe(redis, pool)
    checks = {
        "redis": probe.checks["redis"],
        "redis_eviction": "unknown",
        "redis_layout": "unknown",
        "redis_memory": "unknown",
        "redis_persistence": "unknown",
    }
    if probe.checks["redis"] == health.OK:
        checks["redis_eviction"] = await health.failure_of(startup.refuse_eviction(redis))
        checks["redis_layout"] = await health.failure_of(
            startup.check_recorded_layout(redis, settings.shards)
        )
        try:
            memory = await startup.memory(redis)
        except CounterUnavailable as exc:
            metrics.count_backend_error(exc)
        else:
            metrics.set_redis_memory(memory)
            checks["redis_memory"] = memory_check(memory)
    # Redis refusing writes it cannot persist refuses PING too (MISCONF), yet answers INFO.
    if probe.checks["redis"] == health.OK or client.MISCONF in probe.checks["redis"]:
        try:
            persistence = await startup.persistence(redis)
        except CounterUnavailable as exc:
            metrics.count_backend_error(exc)
        else:
            metrics.set_redis_persistence(persistence)
            checks["redis_persistence"] = persistence_check(persistence)
    checks["postgres"] = probe.checks["postgres"]
    checks["migrations"] = probe.checks["migrations"]
    status, code = readiness_status(checks)
    return status, code, checks


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "hits cannot be counted: Redis unreachable, evicting, refusing "
            "writes it cannot persist (full disk), or split over another number of units"
        }
    },
)
async def readyz(state: AppState) -> Response:
    """Whether this api can count hits, for load balancers: 200 or 503 and the bare status
    ("ok", "warning", "degraded"; "unavailable" with 503), never the checks.

    The checks themselves (which dependency is wrong, and how) are on the metrics listener
    (VIEWCOUNTER_API_METRICS_PORT, services/api/ops_listener.py), not on this public port.
    """
    status, code, _checks = await readiness(state["redis"], state["pool"], state["settings"])
    return JSONResponse({"status": status}, status_code=code)


async def metrics_text(redis: Client) -> bytes:
    """The api's metrics in Prometheus text format (with several workers: all of them,
    merged), Redis' memory gauges refreshed first."""
    try:
        metrics.set_redis_memory(await startup.memory(redis))
        metrics.set_redis_persistence(await startup.persistence(redis))
    except CounterUnavailable as exc:
        metrics.count_backend_error(exc)  # the gauges keep their last value
    return metrics.exposition()
