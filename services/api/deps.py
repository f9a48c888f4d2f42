"""Typed access to the lifespan state, as `Annotated` dependencies for routes."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Annotated, TypedDict

from fastapi import Depends, Request
from pydantic import SecretStr

from services.api.errors import ApiError
from services.config import Settings
from services.counter.baselinestore import BaselineStore
from services.counter.client import Client
from services.counting.live import LiveCounts
from services.counting.top import MostRead
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
    )


async def get_titles(request: Request) -> db_titles.Titles:
    """Page titles in Postgres."""
    titles: db_titles.Titles = request.state.titles
    return titles


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


async def require_admin(request: Request) -> None:
    """Refuse unless the bearer token equals VIEWCOUNTER_ADMIN_TOKEN (compared in constant time)."""
    settings: Settings = request.state.settings
    await require_token_of(
        request,
        [settings.admin_token],
        "admin",
        ("admin_disabled", "admin routes are off: no admin token is set"),
    )


async def require_ingest(request: Request) -> None:
    """Refuse unless the bearer token is VIEWCOUNTER_INGEST_TOKEN or the admin token."""
    settings: Settings = request.state.settings
    await require_token_of(
        request,
        [settings.ingest_token, settings.admin_token],
        "ingest",
        ("ingest_disabled", "batch ingestion is off: no ingest token is set"),
    )


async def require_token_of(
    request: Request, tokens: Sequence[SecretStr | None], who: str, off: tuple[str, str]
) -> None:
    """Refuse (after the rate check) unless the bearer token is one of `tokens` (those set);
    none set: 403 with `off` (code, message), the routes are off."""
    await refuse_over_rate(request)
    accepted = [t for t in tokens if t is not None]
    if not accepted:
        raise ApiError(403, *off)
    require_bearer(request, accepted, who)


async def refuse_over_rate(request: Request) -> None:
    """429 when this client sent more than VIEWCOUNTER_ADMIN_RATE_LIMIT admin, report or batch
    requests this clock minute."""
    settings: Settings = request.state.settings
    live: LiveCounts = request.state.live
    # Before the token check, so guessing tokens is as slow as anything else.
    retry_after = await live.admin_retry_after(
        request.client.host if request.client else "", settings.admin_rate_limit
    )
    if retry_after is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"more than {settings.admin_rate_limit} admin requests a minute from this client",
            headers={"Retry-After": str(retry_after)},
        )


def require_bearer(request: Request, accepted: list[SecretStr], what: str) -> None:
    """401 unless the request's bearer token is one of `accepted`."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Hash both sides so the comparison time does not depend on the lengths either; compare
    # with every accepted token, so the time does not tell which one nearly matched.
    matches = [
        secrets.compare_digest(_digest(given), _digest(token.get_secret_value()))
        for token in accepted
    ]
    if scheme.lower() != "bearer" or not any(matches):
        raise ApiError(
            401,
            "unauthorized",
            f"a valid {what} bearer token is required",
            "authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )


# All dependencies are `async def`: a plain `def` costs a thread-pool hop per request.
Live = Annotated[LiveCounts, Depends(get_live)]
TitlesDep = Annotated[db_titles.Titles, Depends(get_titles)]
AppState = Annotated[State, Depends(get_state)]
Admin = Depends(require_admin)
