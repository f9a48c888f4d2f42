"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from services.api.deps import AppState
from services.counter import store as counter_store
from services.db import repository

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """The process answers."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(state: AppState) -> Response:
    """Redis and Postgres both answer (hits need Redis only; admin and reports need Postgres)."""
    checks = {"redis": "ok", "postgres": "ok"}
    try:
        await state["store"].ping()
    except counter_store.CounterUnavailable as exc:
        checks["redis"] = str(exc)
    try:
        await state["repo"].ping()
    except repository.DatabaseUnavailable as exc:
        checks["postgres"] = str(exc)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
