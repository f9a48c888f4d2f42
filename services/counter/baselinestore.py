"""Baselines in Redis: the load generation a change was recorded under, and applying a
committed change's deltas to the live totals once."""

from __future__ import annotations

from collections.abc import Sequence

from services.counter import calls, client, keys, scripts
from services.counter.client import Client
from services.counter.units import Units

GENERATION_SEP = "|"


class BaselineStore:
    """Baseline changes on the live totals; Redis errors raise CounterUnavailable."""

    def __init__(self, redis: Client, units: Units) -> None:
        self._redis = redis
        self._units = units

    async def site_generation(self, site: str) -> str | None:
        """The load generations of the site's units as one token ("|" between units, "" for
        a unit not loaded); None when no unit is loaded."""
        if self._units.count == 1:
            return await self._units.generation(site)
        with client.translated():
            async with self._redis.pipeline(transaction=False) as pipe:
                for unit in self._units.of(site):
                    pipe.hget(keys.site_key(unit), keys.SITE_GEN)
                gens = await pipe.execute()
        if all(gen is None for gen in gens):
            return None
        return GENERATION_SEP.join(gen or "" for gen in gens)

    async def apply_baseline(
        self,
        site: str,
        generation: str,
        change_id: int,
        chunk: int,
        site_delta: int,
        page_deltas: Sequence[tuple[str, int]],
    ) -> int:
        """Add one chunk of a committed baseline change to the live totals, if the site is
        still loaded under `generation` (site_generation's) and the chunk is newer than the
        last one applied: 1 applied, 2 applied before, 0 not this generation (a load since
        included it). Split over units, each unit takes its pages' deltas (and as many
        on its part of the site total, which unit 0's part gives back) under its own
        generation, each unit once."""
        unit_ids = self._units.of(site)
        gens = generation.split(GENERATION_SEP) if self._units.count > 1 else [generation]
        if len(gens) != len(unit_ids):
            return 0  # recorded under another layout: the units loaded since include it
        pages: dict[str, list[str]] = {unit: [] for unit in unit_ids}
        deltas: dict[str, list[int]] = {unit: [] for unit in unit_ids}
        parts = dict.fromkeys(unit_ids, 0)
        for page, delta in page_deltas:
            unit = self._units.holding(site, page)
            pages[unit].append(page)
            deltas[unit].append(delta)
            if unit != site:
                parts[unit] += delta
        parts[site] = site_delta - sum(parts.values())
        call_list = [
            calls.pages_call(
                scripts.APPLY_BASELINE,
                unit,
                (gen, change_id, chunk, parts[unit]),
                pages[unit],
                deltas[unit],
            )
            for unit, gen in zip(unit_ids, gens, strict=True)
            if gen and (unit == site or pages[unit])
        ]
        outcomes = [int(r) for r in await scripts.run(self._redis, call_list)]
        self._units.forget(site)
        return 1 if 1 in outcomes else 2 if 2 in outcomes else 0
