"""Three flusher processes share six sites (whole, or each split into 4 units); the one
holding most leases is killed -9."""

from __future__ import annotations

import re
import signal
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from services.config import Settings
from services.counter import keys
from tests.support import chaos
from tests.support.stack import make_settings, register_site, running_api

# The slowest chaos test takes 15 s; each wait is bounded by harness.WAIT_S (30 s).
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
SITES = [f"site{n}" for n in range(6)]
OWNER = re.compile(r'"owner": ?"([0-9a-f]+)"')


async def lease_holders(redis_url: str, units: list[str]) -> dict[str, str]:
    """unit -> owner token of the flusher holding its lease (units without one left out)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        values = [await client.get(keys.lease_key(unit)) for unit in units]
    finally:
        await client.aclose()
    return {unit: str(owner) for unit, owner in zip(units, values, strict=True) if owner}


async def batch_owners(database_url: str) -> dict[str, set[str]]:
    """unit -> owners of the batches committed for it (batch id: `<ms>-<owner>-<seq>`)."""
    rows = await chaos.committed_batches(database_url)
    owners: dict[str, set[str]] = {}
    for row in rows:
        owner = row["batch_id"].split("-")[1]
        for key in row["snapshot_keys"]:
            parsed = keys.parse_snapshot_key(key)
            if parsed is not None:
                owners.setdefault(parsed[0], set()).add(owner)
    return owners


@pytest.mark.parametrize("shards", [1, 4])
async def test_three_flushers_one_killed_survivors_take_its_units_exactly(
    settings: Settings, tmp_path: Path, shards: int
) -> None:
    settings = make_settings(
        settings.redis_url, settings.database_url, flush_interval=0.05, shards=shards
    )
    units = [unit for site in SITES for unit in keys.units(site, shards)]
    async with running_api(settings) as api:
        await _three_flushers(api, settings, units, tmp_path)


async def _three_flushers(
    api: httpx.AsyncClient, settings: Settings, units: list[str], tmp_path: Path
) -> None:
    for site in SITES:
        await register_site(api, site)
    loads = [chaos.Load(api, site, pages=10, seed=30 + n) for n, site in enumerate(SITES)]
    logs = [tmp_path / f"flusher{n}.log" for n in range(3)]
    async with AsyncExitStack() as stack:
        sampler = stack.enter_context(chaos.Sampler(settings.database_url, loads))
        flushers = [
            stack.enter_context(chaos.flusher_process(settings, log, VIEWCOUNTER_LOG_LEVEL="info"))
            for log in logs
        ]
        for load in loads:
            await stack.enter_async_context(load.flowing(clients=1))
        await chaos.until(lambda: all(OWNER.search(log.read_text()) for log in logs), "3 flushers")
        owners = [OWNER.search(log.read_text()).group(1) for log in logs]  # type: ignore[union-attr]

        async def all_leased() -> bool:
            return len(await lease_holders(settings.redis_url, units)) == len(units)

        await chaos.until(all_leased, "every unit to be leased")
        for load in loads:
            await load.more_acked(50)
        held = Counter((await lease_holders(settings.redis_url, units)).values())
        victim_owner = held.most_common(1)[0][0]
        victim = owners.index(victim_owner)
        victim_units = sorted(
            s
            for s, o in (await lease_holders(settings.redis_url, units)).items()
            if o == victim_owner
        )
        flushers[victim].send_signal(signal.SIGKILL)
        assert flushers[victim].wait(10) == -signal.SIGKILL
        survivors = [p for i, p in enumerate(flushers) if i != victim]

        async def taken_over() -> bool:
            holders = await lease_holders(settings.redis_url, units)
            done = await batch_owners(settings.database_url)
            return all(
                holders.get(s, victim_owner) != victim_owner and done.get(s, set()) - {victim_owner}
                for s in victim_units
            )

        await chaos.until(taken_over, "the survivors to lease and flush the victim's units")
        takers = set((await lease_holders(settings.redis_url, units)).values())
        for load in loads:
            await load.more_acked(50)
            await load.halt()
        for proc in survivors:
            assert await chaos.stop_gracefully(proc) == 0

    result = await chaos.final_report(
        f"3 flushers, one kill -9 ({settings.shards} unit(s) a site)", settings.database_url,
        loads, sampler,
        notes=(
            f"{len(SITES)} sites, {len(units)} units; leases before the kill "
            f"{dict(sorted(held.items()))}; the killed one held {len(victim_units)}; after it, "
            f"held by {sorted(takers)}"
        ),
    )  # fmt: skip
    assert victim_owner not in takers
    for load in loads:
        assert load.unknown_total == 0
    result.assert_exact()
