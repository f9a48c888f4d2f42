"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, PlainTextResponse, Response

from services import health, metrics
from services.api.deps import AppState
from services.counter import startup
from services.counter.errors import CounterUnavailable
from services.counter.outcomes import RedisMemory

# Readiness warns (and ops should act) once Redis uses this share of its maxmemory: with
# noeviction, Redis refuses every hit when it is full.
REDIS_MEMORY_WARN_RATIO = 0.8

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


@router.get(
    "/readyz",
    responses={503: {"description": "Redis or Postgres unreachable, or schema behind"}},
)
async def readyz(state: AppState) -> Response:
    """Redis and Postgres answer and every migration is applied (hits need Redis only; admin
    and reports need Postgres).

    Answers 503 naming what is wrong otherwise, and 200 with status "warning" when Redis is
    near its memory bound (the api still counts; ops must act before it is full).
    """
    probe = await health.probe(state["redis"], state["pool"])
    checks = {"redis": probe.checks["redis"], "redis_memory": "unknown"}
    if probe.checks["redis"] == health.OK:
        try:
            memory = await startup.memory(state["redis"])
        except CounterUnavailable as exc:
            metrics.count_backend_error(exc)
        else:
            metrics.set_redis_memory(memory)
            checks["redis_memory"] = memory_check(memory)
    checks["postgres"] = probe.checks["postgres"]
    checks["migrations"] = probe.checks["migrations"]
    if not probe.ready:
        status = "unavailable"
    elif checks["redis_memory"].startswith("warning"):
        status = "warning"
    else:
        status = "ok"
    return JSONResponse(
        {"status": status, "checks": checks}, status_code=200 if probe.ready else 503
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics_text(state: AppState) -> Response:
    """Prometheus text format (with several workers: all of them, merged)."""
    try:
        metrics.set_redis_memory(await startup.memory(state["redis"]))
    except CounterUnavailable as exc:
        metrics.count_backend_error(exc)  # the gauges keep their last value
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
