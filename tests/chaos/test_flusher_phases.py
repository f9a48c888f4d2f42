"""kill -9 of a flusher process in every phase of a flush, while hits flow.

Each run starts a flusher (tests/support/crashing_flusher.py: the real command, which SIGKILLs
itself at the phase named), checks that Redis and Postgres hold exactly the state that phase
leaves, then lets an ordinary flusher take the site over (its lease runs out after 1 s) and
finish, and compares Postgres with what was acknowledged.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from services.config import Settings
from services.counter import keys
from tests.support import chaos, crashing_flusher
from tests.support.stack import make_settings

# The slowest chaos test takes 15 s; each wait is bounded by harness.WAIT_S (30 s).
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


async def snapshot_keys(redis_url: str) -> set[str]:
    """Frozen snapshot keys in Redis (every site)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = [k async for k in client.scan_iter(match=keys.WORK_KEYS_PATTERN, count=1000)]
    finally:
        await client.aclose()
    return {k for k in found if keys.parse_snapshot_key(k) is not None}


async def ledger(database_url: str) -> dict[str, list[str]]:
    """batch id -> its snapshot keys, for every committed batch."""
    rows = await chaos.committed_batches(database_url)
    return {r["batch_id"]: list(r["snapshot_keys"]) for r in rows}


async def check_state_left(phase: str, settings: Settings) -> str:
    """Assert what the crash left in Redis and Postgres; a note for the report."""
    left = await snapshot_keys(settings.redis_url)
    committed = await ledger(settings.database_url)
    assert left, f"{phase}: the crashed flusher left no snapshot"
    if phase in ("after_snapshot", "in_transaction"):
        # Frozen (and on disk), never committed: the next flusher applies it.
        assert not committed, f"{phase}: a batch was committed: {committed}"
        return f"left {len(left)} snapshot keys, ledger empty"
    # Committed, delete not (fully) done: exactly one committed batch still has keys in Redis.
    pending = {b: [k for k in ks if k in left] for b, ks in committed.items()}
    pending = {b: ks for b, ks in pending.items() if ks}
    assert len(pending) == 1, f"{phase}: committed batches with keys left: {pending}"
    ((batch, remaining),) = pending.items()
    total = len(committed[batch])
    if phase == "after_commit":
        assert len(remaining) == total, f"{phase}: {remaining} of {committed[batch]}"
    else:
        assert len(remaining) == total - 1 >= 1, f"{phase}: {remaining} of {committed[batch]}"
    return f"committed batch with {len(remaining)} of {total} snapshot keys left"


@pytest.mark.parametrize("phase", crashing_flusher.PHASES)
async def test_flusher_killed_in_each_phase_loses_and_doubles_nothing(
    phase: str, api: httpx.AsyncClient, site: str, settings: Settings, tmp_path: Path
) -> None:
    settings = make_settings(settings.redis_url, settings.database_url, flush_interval=0.05)
    load = chaos.Load(api, site, pages=60, seed=len(phase))
    log = tmp_path / "flusher.log"
    with chaos.Sampler(settings.database_url, [load]) as sampler:
        async with load.flowing(clients=4):
            await load.more_acked(100)
            with chaos.flusher_process(settings, log, crash_at=phase) as crashing:
                code = await asyncio.to_thread(crashing.wait, 30)
            assert code == -signal.SIGKILL, f"no crash at {phase}: {log.read_text()}"
            note = await check_state_left(phase, settings)
            batches = await chaos.ledger_count(settings.database_url)
            left = await snapshot_keys(settings.redis_url)

            with chaos.flusher_process(settings, log) as flusher:

                async def taken_over() -> bool:
                    now = await snapshot_keys(settings.redis_url)
                    done = await chaos.ledger_count(settings.database_url)
                    return not left & now and done > batches

                await chaos.until(taken_over, "a new flusher to finish the crashed batch")
                await load.more_acked(100)
                await load.halt()
                assert await chaos.stop_gracefully(flusher) == 0  # its final flush takes the rest
    result = await chaos.final_report(
        f"flusher kill -9 {phase}", settings.database_url, [load], sampler, notes=note
    )
    assert load.unknown_total == 0
    result.assert_exact()
