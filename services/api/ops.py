"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.responses import JSONResponse, PlainTextResponse, Response

from services.api.deps import AppState
from services.counter import store as counter_store
from services.db import repository

# Readiness warns (and ops should act) once Redis uses this share of its maxmemory: with
# noeviction, Redis refuses every hit when it is full.
REDIS_MEMORY_WARN_RATIO = 0.8

REDIS_USED = Gauge("viewcounter_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)")
REDIS_MAX = Gauge(
    "viewcounter_redis_memory_max_bytes", "Redis' maxmemory bound; 0 when none is set"
)

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """The process answers."""
    return JSONResponse({"status": "ok"})


def memory_check(memory: counter_store.RedisMemory) -> str:
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
    responses={503: {"description": "Redis or Postgres unreachable (same body shape)"}},
)
async def readyz(state: AppState) -> Response:
    """Redis and Postgres both answer (hits need Redis only; admin and reports need Postgres).

    Answers 503 when either is unreachable, and 200 with status "warning" when Redis is near
    its memory bound (the api still counts; ops must act before it is full).
    """
    checks = {"redis": "ok", "redis_memory": "unknown", "postgres": "ok"}
    try:
        await state["store"].ping()
        memory = await state["store"].memory()
        REDIS_USED.set(memory.used_bytes)
        REDIS_MAX.set(memory.max_bytes)
        checks["redis_memory"] = memory_check(memory)
    except counter_store.CounterUnavailable as exc:
        checks["redis"] = str(exc)
    try:
        await state["repo"].ping()
    except repository.DatabaseUnavailable as exc:
        checks["postgres"] = str(exc)
    ready = checks["redis"] == "ok" and checks["postgres"] == "ok"
    if not ready:
        status = "unavailable"
    elif checks["redis_memory"].startswith("warning"):
        status = "warning"
    else:
        status = "ok"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: AppState) -> Response:
    """Prometheus text format."""
    try:
        memory = await state["store"].memory()
        REDIS_USED.set(memory.used_bytes)
        REDIS_MAX.set(memory.max_bytes)
    except counter_store.CounterUnavailable:
        pass  # the gauges keep their last value; redis errors are counted elsewhere
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
