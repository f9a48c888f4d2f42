"""Readiness checks and the bounded start-up wait, shared by the api and the flusher.

`probe` checks Redis, Postgres and that every migration shipped with this code is applied (a
process newer than its schema would fail on its first write). What each process makes of it
differs: the api's readiness follows what hits need (services/api/ops.py), the flusher's adds
whether its passes succeed (services/flusher/main.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from services import metrics
from services.counter import startup
from services.counter.client import Client
from services.counter.errors import CounterUnavailable, LayoutMismatch, UnsafeRedis
from services.db import errors as db_errors
from services.db import migrate
from services.db import pool as db_pool

log = logging.getLogger("viewcounter.startup")

OK = "ok"
MIGRATIONS_TIMEOUT_S = 5.0
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 2.0


class SchemaBehind(Exception):
    """Postgres answers, but migrations shipped with this code are not applied."""


class StartupFailed(Exception):
    """A dependency was still unreachable when the start-up wait ran out."""


@dataclass
class Readiness:
    """One probe: a check per dependency, "ok" or what is wrong."""

    checks: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Whether every check passed."""
        return all(value == OK for value in self.checks.values())


async def check_redis(redis: Client) -> None:
    """Raise CounterUnavailable unless Redis answers."""
    await startup.ping(redis)


async def check_migrations(pool: db_pool.Pool) -> None:
    """Raise DatabaseUnavailable unless Postgres answers, SchemaBehind unless it is migrated."""
    missing = await migrate.pending(pool, timeout_s=MIGRATIONS_TIMEOUT_S)
    if missing:
        versions = ", ".join(f"{v:04d}" for v in missing)
        raise SchemaBehind(f"migrations not applied: {versions} (run `viewcounter migrate`)")


async def probe(redis: Client, pool: db_pool.Pool) -> Readiness:
    """Check Redis, Postgres and the schema; failures are counted as Redis/Postgres errors."""
    result = Readiness({"redis": OK, "postgres": OK, "migrations": OK})
    try:
        await check_redis(redis)
    except CounterUnavailable as exc:
        metrics.count_backend_error(exc)
        result.checks["redis"] = str(exc)
    try:
        await check_migrations(pool)
    except db_errors.DatabaseUnavailable as exc:
        metrics.count_backend_error(exc)
        result.checks["postgres"] = str(exc)
        result.checks["migrations"] = "unknown (Postgres unreachable)"
    except SchemaBehind as exc:
        result.checks["migrations"] = str(exc)
    return result


async def failure_of(check: Awaitable[None]) -> str:
    """ "ok" when `check` passes, else its error (a Redis error is counted)."""
    try:
        await check
    except (CounterUnavailable, UnsafeRedis, LayoutMismatch) as exc:
        if isinstance(exc, CounterUnavailable):
            metrics.count_backend_error(exc)
        return str(exc)
    return OK


Check = Callable[[], Awaitable[None]]
_WAITED_FOR = (CounterUnavailable, db_errors.DatabaseUnavailable, SchemaBehind)


async def wait_for(
    checks: Mapping[str, Check], timeout_s: float, stop: asyncio.Event | None = None
) -> bool:
    """Retry each check until it passes, all within `timeout_s` in total; one log line per
    failed attempt. True when all passed; False when `stop` was set first.

    Raises StartupFailed naming the dependency and its last error once the time is up.
    Errors other than unreachable/behind (an unsafe Redis configuration) are raised at once.
    """
    started = time.monotonic()
    for name, check in checks.items():
        attempt = 0
        while True:
            attempt += 1
            try:
                await check()
            except _WAITED_FOR as exc:
                error = str(exc)
            else:
                if attempt > 1:
                    log.info("%s is reachable", name, extra={"dependency": name})
                break
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise StartupFailed(
                    f"{name} still unavailable after {waited:.0f} s "
                    f"(VIEWCOUNTER_STARTUP_TIMEOUT={timeout_s:g}): {error}"
                )
            log.warning(
                "waiting for %s (attempt %d, %.1f of %g s): %s",
                name,
                attempt,
                waited,
                timeout_s,
                error,
                extra={"dependency": name, "attempt": attempt, "error": error},
            )
            delay = min(FIRST_RETRY_S * 2 ** (attempt - 1), MAX_RETRY_S, timeout_s - waited)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                else:
                    return False
    return True
