"""The connection pool, and the one place asyncpg and OS errors become DatabaseUnavailable.

Every repository of this package receives a pool (which it never closes) and runs its
queries through `connection` or `transaction` below, so callers deal with one error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.db.errors import DatabaseUnavailable

Pool = asyncpg.Pool
"""What `connect_pool` opens; callers outside this package hold it by this name."""
Conn = asyncpg.Connection | PoolConnectionProxy
Record = asyncpg.Record


def connect_pool(
    url: str, *, statement_timeout_s: float, min_size: int = 0, max_size: int = 10
) -> Awaitable[Pool]:
    """A pool with server-side timeouts, so a stuck query or lock cannot hang a worker."""
    ms = str(int(statement_timeout_s * 1000))
    return asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=10,
        command_timeout=statement_timeout_s + 5,
        server_settings={
            "statement_timeout": ms,
            "lock_timeout": ms,
            "idle_in_transaction_session_timeout": str(int(statement_timeout_s * 2000)),
            "application_name": "viewcounter",
            # The flusher deletes a snapshot from Redis once COMMIT returns: that COMMIT must
            # be durable even where the server default is synchronous_commit=off.
            "synchronous_commit": "on",
        },
    )


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Raise DatabaseUnavailable for whatever the driver (or the network under it) raises."""
    try:
        yield
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,  # a connection left mid-operation by a dead server
        OSError,
        TimeoutError,
    ) as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc


@asynccontextmanager
async def connection(pool: Pool, *, timeout_s: float | None = None) -> AsyncIterator[Conn]:
    """A connection of `pool` for one unit of work; driver errors become DatabaseUnavailable."""
    async with translated(), pool.acquire(timeout=timeout_s) as conn:
        yield conn


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Conn]:
    """A connection of `pool` inside a transaction; driver errors become DatabaseUnavailable."""
    async with translated(), pool.acquire() as conn, conn.transaction():
        yield conn


@asynccontextmanager
async def streaming_transaction(
    pool: Pool, *, clean: tuple[type[BaseException], ...] = ()
) -> AsyncIterator[Conn]:
    """A transaction whose connection is terminated, not handed back to the pool, when the
    work fails with anything but the `clean` exceptions (those roll back and leave the
    connection fine); driver errors become DatabaseUnavailable."""
    async with translated(), pool.acquire() as conn:
        try:
            async with conn.transaction():
                yield conn
        except clean:
            raise
        except BaseException:
            # Cancelled or failed mid-transaction (a COPY cut mid-stream too), or the server
            # went away: never hand this connection back to the pool in an unknown state.
            if not conn.is_closed():
                conn.terminate()
            raise
