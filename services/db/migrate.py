"""Versioned schema migrations: numbered .sql files applied in order, once, under a lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.db import pool as db_pool
from services.db.errors import DatabaseUnavailable

# Any constant works; it only has to be the same for every process that migrates.
MIGRATION_LOCK_ID = 0x76636D67  # "vcmg"
_NAME_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    """One schema step."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _NAME_RE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations in one transaction; safe to run from several processes at once."""
    async with conn.transaction():
        # Concurrent migrators queue here; the second one then finds nothing left to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for step in migrations():
            if step.version in done:
                continue
            await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                step.version,
                step.name,
            )
            applied.append(step.version)
        return applied


async def missing(conn: asyncpg.Connection | PoolConnectionProxy) -> list[int]:
    """Versions of the migrations shipped with this code that `conn`'s database lacks."""
    applied: set[int] = set()
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [step.version for step in migrations() if step.version not in applied]


async def pending(pool: db_pool.Pool, *, timeout_s: float) -> list[int]:
    """Versions of the shipped migrations the pool's database lacks; DatabaseUnavailable when
    Postgres does not answer (a connection included) within `timeout_s`."""
    async with db_pool.connection(pool, timeout_s=timeout_s) as conn:
        return await missing(conn)


async def migrate_database(url: str, *, connect_timeout_s: float) -> list[int]:
    """Connect to `url` and apply pending migrations (see `migrate`); the versions applied.

    Raises DatabaseUnavailable when Postgres cannot be reached. An error while migrating is
    raised as the driver's: a migration that fails is a bug to be seen whole.
    """
    try:
        conn = await asyncpg.connect(url, timeout=connect_timeout_s)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    try:
        return await migrate(conn)
    finally:
        await conn.close()
