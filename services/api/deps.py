"""Typed access to the lifespan state, as `Annotated` dependencies for routes."""

from __future__ import annotations

from typing import Annotated, TypedDict

from fastapi import Depends, Request

from services.config import Settings
from services.counter.baselinestore import BaselineStore
from services.counter.client import Client
from services.counting.apikeys import KeyRing
from services.counting.live import LiveCounts
from services.counting.top import MostRead
from services.db import audit as db_audit
from services.db import baselines as db_baselines
from services.db import pool as db_pool
from services.db import reports as db_reports
from services.db import titles as db_titles


class State(TypedDict):
    """What the lifespan opens and every request may use."""

    settings: Settings
    redis: Client  # for health checks; counting goes through `live`
    pool: db_pool.Pool  # for the readiness probe
    baseline_store: BaselineStore
    baselines: db_baselines.Baselines
    reports: db_reports.Reports
    live: LiveCounts
    titles: db_titles.Titles
    top: MostRead
    keyring: KeyRing
    audit: db_audit.AuditLog


async def get_live(request: Request) -> LiveCounts:
    """The live-count service."""
    live: LiveCounts = request.state.live
    return live


async def get_state(request: Request) -> State:
    """All clients, for routes that need more than counting (health)."""
    return State(
        settings=request.state.settings,
        redis=request.state.redis,
        pool=request.state.pool,
        baseline_store=request.state.baseline_store,
        baselines=request.state.baselines,
        reports=request.state.reports,
        live=request.state.live,
        titles=request.state.titles,
        top=request.state.top,
        keyring=request.state.keyring,
        audit=request.state.audit,
    )


async def get_titles(request: Request) -> db_titles.Titles:
    """Page titles in Postgres."""
    titles: db_titles.Titles = request.state.titles
    return titles


async def get_keyring(request: Request) -> KeyRing:
    """The sites' API keys."""
    keyring: KeyRing = request.state.keyring
    return keyring


async def get_audit_log(request: Request) -> db_audit.AuditLog:
    """The audit log, for reading."""
    audit: db_audit.AuditLog = request.state.audit
    return audit


# All dependencies are `async def`: a plain `def` costs a thread-pool hop per request.
Live = Annotated[LiveCounts, Depends(get_live)]
TitlesDep = Annotated[db_titles.Titles, Depends(get_titles)]
AppState = Annotated[State, Depends(get_state)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
AuditLogDep = Annotated[db_audit.AuditLog, Depends(get_audit_log)]
