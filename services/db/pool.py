"""The connection pool, and the one place asyncpg and OS errors become DatabaseUnavailable.

Every repository of this package receives a pool (which it never closes) and runs its
queries through `connection` or `transaction` below, so callers deal with one error.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.db.errors import ConnectionLost, DatabaseUnavailable

log = logging.getLogger("viewcounter.db")

# What asyncpg raises for a call on a connection the server closed under it, instead of
# the reason (see `_transaction`).
_CLIENT_STATE_ERRORS = (asyncpg.InterfaceError, asyncpg.InternalClientError)
CLOSE_NOTICE_S = 0.5

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
    """A connection of `pool` for one unit of work; driver errors become DatabaseUnavailable.

    As in `transaction`, a server that closed the connection under the work is named as such
    (ConnectionLost), not by asyncpg's "released back to the pool" for the next call, and a
    release that fails after it is only logged.
    """
    # Spelled out rather than `async with pool.acquire()`, for the reason `_transaction` gives.
    async with translated():
        conn = await pool.acquire(timeout=timeout_s)
        try:
            yield conn
        except _CLIENT_STATE_ERRORS as exc:
            if await _closes_soon(conn):
                raise ConnectionLost(
                    "under a statement or between two",
                    "a statement sent then may or may not have run",
                ) from exc
            raise
        finally:
            await _secondary("release", sys.exc_info()[1], pool.release(conn))


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Conn]:
    """A connection of `pool` inside a transaction; driver errors become DatabaseUnavailable.

    A failure of the work is the error raised: a failed ROLLBACK or release after it (the
    server went away) is only logged.
    """
    async with _transaction(pool, clean=(BaseException,)) as conn:
        yield conn


@asynccontextmanager
async def streaming_transaction(
    pool: Pool, *, clean: tuple[type[BaseException], ...] = ()
) -> AsyncIterator[Conn]:
    """A transaction whose connection is terminated, not handed back to the pool, when the
    work fails with anything but the `clean` exceptions (those roll back and leave the
    connection fine); driver errors become DatabaseUnavailable.

    The work's own error is the one raised, never one of the clean-up after it."""
    async with _transaction(pool, clean=clean) as conn:
        yield conn


@asynccontextmanager
async def _transaction(
    pool: Pool, *, clean: tuple[type[BaseException], ...]
) -> AsyncIterator[Conn]:
    # Spelled out rather than `async with pool.acquire(), conn.transaction()`: when the server
    # goes away mid-transaction, asyncpg detaches the connection from its pool proxy, and
    # those context managers' exits then raise InterfaceError ("connection has been released
    # back to the pool"), which would replace the error that says what happened.
    async with translated():
        conn = await pool.acquire()
        try:
            tx = conn.transaction()
            await tx.start()
            try:
                yield conn
            except clean as exc:
                # Refused on purpose (or a plain transaction's failure): roll back and keep
                # the connection, unless the rollback fails too.
                if _alive(conn) and not await _secondary("rollback", exc, tx.rollback()):
                    _terminate(conn, exc)
                raise
            except BaseException as exc:
                # Cancelled or failed mid-transaction (a COPY cut mid-stream too), or the
                # server went away: never hand this connection back in an unknown state.
                if isinstance(exc, _CLIENT_STATE_ERRORS) and await _closes_soon(conn):
                    # The server closed the connection under the work: asyncpg took it back
                    # from the pool proxy, and the next call said only "released back to the
                    # pool" (it sat idle while the work read Redis), or "another operation is
                    # in progress" (a COPY cut off). Neither says what happened.
                    raise ConnectionLost() from exc
                _terminate(conn, exc)
                raise
            try:
                await tx.commit()
            except BaseException as exc:
                _terminate(conn, exc)
                raise
        finally:
            # Released whatever happened; a release that fails (the server went away as the
            # connection was reset) is logged, and never replaces the work's own error.
            await _secondary("release", sys.exc_info()[1], pool.release(conn))


async def _secondary(what: str, cause: BaseException | None, cleanup: Awaitable[object]) -> bool:
    """Await `cleanup`; True when it worked. Its failure is logged as secondary to `cause`
    (the error being raised, if any) and swallowed: `cause` is the one that names the fault."""
    try:
        await cleanup
    except Exception as exc:
        log.warning(
            "%s of a connection after its work failed too: %s: %s",
            what,
            type(exc).__name__,
            exc,
            extra={
                "error": f"{type(exc).__name__}: {exc}",
                "cause": None if cause is None else f"{type(cause).__name__}: {cause}",
            },
        )
        return False
    return True


async def _closes_soon(conn: Conn) -> bool:
    """Whether `conn` is closed, or closes within CLOSE_NOTICE_S: a FATAL error the server sent
    before closing can reach the driver (and fail the next call) just before the close does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_NOTICE_S
    while _alive(conn):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _alive(conn: Conn) -> bool:
    """Whether `conn` is still open and ours (the driver takes back one it saw die)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return False


def _terminate(conn: Conn, cause: BaseException) -> None:
    """Close `conn` at once (no round trip), unless the driver closed it already."""
    try:
        if _alive(conn):
            conn.terminate()
    except Exception as exc:  # never replaces `cause`
        log.warning(
            "terminating a failed connection failed: %s: %s",
            type(exc).__name__,
            exc,
            extra={"error": str(exc), "cause": f"{type(cause).__name__}: {cause}"},
        )
