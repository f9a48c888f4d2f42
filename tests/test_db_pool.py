"""The pool's `connection` helper when Postgres ends the session under it: the error raised
names what happened, never asyncpg's "released back to the pool" clean-up error."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.db import errors as db_errors
from services.db import pool as db_pool


async def end_sessions(database_url: str) -> int:
    """pg_terminate_backend every viewcounter session of the database; how many."""
    conn = await asyncpg.connect(database_url)
    try:
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'viewcounter' AND datname = current_database()"
        )
    finally:
        await conn.close()
    return int(ended)


async def test_a_session_ended_between_statements_is_named_not_the_clean_up(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await db_pool.connect_pool(database_url, statement_timeout_s=5)
    try:
        with caplog.at_level("DEBUG"), pytest.raises(db_errors.DatabaseUnavailable) as raised:
            async with db_pool.connection(pool) as conn:
                assert await conn.fetchval("SELECT 1") == 1
                assert await end_sessions(database_url) == 1
                await conn.fetchval("SELECT 2")
        # the pool still works afterwards
        async with db_pool.connection(pool) as conn:
            assert await conn.fetchval("SELECT 3") == 3
    finally:
        await pool.close()
    assert "InterfaceError" not in str(raised.value)
    assert not [r for r in caplog.records if "InterfaceError" in r.getMessage()]


async def test_a_session_ended_mid_statement_is_named_not_the_clean_up(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await db_pool.connect_pool(database_url, statement_timeout_s=5)
    try:
        with caplog.at_level("DEBUG"), pytest.raises(db_errors.DatabaseUnavailable) as raised:
            async with db_pool.connection(pool) as conn:
                sleeping = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(4)"))
                await until_active(database_url)
                assert await end_sessions(database_url) == 1
                await sleeping
    finally:
        await pool.close()
    assert str(raised.value).startswith(
        ("ConnectionDoesNotExistError: ", "ConnectionLost: Postgres closed the connection")
    ), raised.value
    assert not [r for r in caplog.records if "InterfaceError" in r.getMessage()]


async def until_active(database_url: str) -> None:
    """Wait until a viewcounter session of the database runs a statement."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(500):
            if await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'viewcounter'"
                " AND state = 'active' AND datname = current_database()"
            ):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the statement never started")
    finally:
        await conn.close()
