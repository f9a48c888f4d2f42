"""A site split by page over units: which unit holds what, and the site's totals summed over
its units (the cached sum of their parts, the union of their visitor sketches).

One `Units` per process, shared by the stores: a load or a baseline applied through one
store drops the cached total the others read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.client import NEVER_DECODE

from services.counter import calls, client, keys, scripts
from services.counter.client import Client
from services.counter.errors import CounterUnavailable

log = logging.getLogger("viewcounter.store")

# A site split over several units: how long the sum of its units' totals (and the union of
# their visitor sketches) is reused before it is read again.
SITE_TOTAL_CACHE_S = 1.0
SITE_CACHE_MAX = 10_000


@dataclass(slots=True)
class SiteTotal:
    """What this process last read of a site's units (a site split over several)."""

    until: float  # time.monotonic() after which the units are read again
    views: dict[str, int]  # unit -> its part of the site total, as last read or answered
    unloaded: bool  # a unit was not loaded at the last read (Redis lost it)
    unreachable: bool  # a unit's node did not answer the last read
    # Parts answered by scripts since the next read began: newer than what it may bring.
    answered: dict[str, int] = dataclasses.field(default_factory=dict)


class Units:
    """The units of every site (`count` per site, keys.py), and their summed totals."""

    def __init__(self, redis: Client, count: int = 1) -> None:
        if not 1 <= count <= keys.MAX_UNITS:
            raise ValueError(f"units must be 1..{keys.MAX_UNITS}")
        self._redis = redis
        self.count = count
        # On a Cluster, work is indexed per Cluster slot (keys.py); the tags are found once.
        self.per_slot = isinstance(redis, RedisCluster)
        if self.per_slot:
            keys.work_key(0)
        self._totals: dict[str, SiteTotal] = {}
        self._reading: dict[str, asyncio.Task[SiteTotal]] = {}
        self._visitors: dict[tuple[str, str], tuple[float, int]] = {}

    def of(self, site: str) -> list[str]:
        """Every unit of `site`, unit 0 (the site id itself) first."""
        return keys.units(site, self.count)

    def holding(self, site: str, page: str) -> str:
        """The unit of `site` that counts `page`."""
        return calls.unit_of(site, page, self.count)

    async def generation(self, unit: str) -> str | None:
        """The unit's load generation; it changes only when Redis lost the unit and it was
        refilled."""
        with client.translated():
            gen = await self._redis.hget(keys.site_key(unit), keys.SITE_GEN)
        return cast(str | None, gen)

    def forget(self, site: str) -> None:
        """Drop the site's cached total: its parts changed other than by hits (a load, a
        baseline)."""
        self._totals.pop(site, None)

    async def close(self) -> None:
        """Wait for the reads in flight."""
        await asyncio.gather(*self._reading.values(), return_exceptions=True)

    async def site_views(
        self, site: str, fresh: Mapping[str, int], *, wait: bool = True
    ) -> tuple[int, SiteTotal]:
        """The site's live total: the sum of its units' parts (read at most every
        SITE_TOTAL_CACHE_S, `fresh` ones just answered by a script), and that read (whether
        a unit was unloaded or unreachable). Between reads a part only grows, so answers that
        arrive out of order do not make the total shown go back."""
        cached = await self._site_total(site, wait=wait)
        for unit, views in fresh.items():
            cached.views[unit] = max(cached.views.get(unit, views), views)
            cached.answered[unit] = max(cached.answered.get(unit, views), views)
        return sum(cached.views.values()), cached

    async def _site_total(self, site: str, *, wait: bool = True) -> SiteTotal:
        """The site's units as read at most SITE_TOTAL_CACHE_S ago; past that, read again
        (without `wait`, answer what was read last meanwhile: a hit is not held up by a
        node that is slow or down)."""
        cached = self._totals.get(site)
        if cached is not None and cached.until > time.monotonic():
            return cached
        task = self._reading.get(site)
        if task is None:  # one read of the units at a time, however many wait on it
            task = asyncio.ensure_future(self._read_units(site, cached))
            self._reading[site] = task
            task.add_done_callback(self._read_done(site))
        if cached is not None and not wait:
            return cached
        return await asyncio.shield(task)

    def _read_done(self, site: str) -> Callable[[asyncio.Task[SiteTotal]], None]:
        def done(task: asyncio.Task[SiteTotal]) -> None:
            self._reading.pop(site, None)
            if not task.cancelled() and task.exception() is not None:
                log.error("reading the units of %s failed", site, exc_info=task.exception())

        return done

    async def _read_units(self, site: str, before: SiteTotal | None) -> SiteTotal:
        if before is not None:
            before.answered.clear()  # from now on: what this read may not include
        unit_ids = self.of(site)
        answers = await self._read_parts(unit_ids)
        views: dict[str, int] = {}
        unloaded = unreachable = False
        for unit, answer in zip(unit_ids, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, client.CLIENT_ERRORS):
                    raise answer  # cancellation, or a bug: not a Redis failure
                unreachable = True
            elif answer[0] is not None:
                views[unit] = int(answer[1] or 0)
                continue
            else:
                unloaded = True
            # Lost or unreachable: its last known part until it is back.
            if before is not None and unit in before.views:
                views[unit] = before.views[unit]
        if before is not None:
            for unit, value in before.answered.items():  # answered while this read was out
                views[unit] = max(views.get(unit, value), value)
        total = SiteTotal(time.monotonic() + SITE_TOTAL_CACHE_S, views, unloaded, unreachable)
        if len(self._totals) >= SITE_CACHE_MAX:
            self._totals.clear()
        self._totals[site] = total
        return total

    async def _read_parts(self, unit_ids: Sequence[str]) -> list[Any]:
        """Each unit's [generation, part of the site total], or the error reading it."""
        fields = [keys.SITE_GEN, keys.SITE_VIEWS]
        answers: list[Any]
        if isinstance(self._redis, RedisCluster):
            # Each unit on its own: a node that is down costs only its units' parts.
            answers = []
            for start in range(0, len(unit_ids), scripts.CLUSTER_CALLS_AT_ONCE):
                chunk = unit_ids[start : start + scripts.CLUSTER_CALLS_AT_ONCE]
                answers += await asyncio.gather(
                    *(self._redis.hmget(keys.site_key(u), fields) for u in chunk),
                    return_exceptions=True,
                )
        else:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for unit in unit_ids:
                        pipe.hmget(keys.site_key(unit), fields)
                    answers = await pipe.execute()
            except client.CLIENT_ERRORS as exc:
                answers = [exc] * len(unit_ids)
        return answers

    async def site_visitors(self, site: str, day: str, *, cached: bool = True) -> int:
        """Distinct visitors of a site split over several units on `day`: the union of the
        units' sketches, counted in unit 0's slot."""
        hit = self._visitors.get((site, day))
        if cached and hit is not None and hit[0] > time.monotonic():
            return hit[1]
        unit_ids = self.of(site)
        # A sketch is binary: read it as bytes, send it back as bytes.
        get: tuple[Any, ...] = ("GET",)
        options = {NEVER_DECODE: True}
        answers: list[Any]
        if isinstance(self._redis, RedisCluster):
            # Each unit on its own: a node that is down costs only its units' sketches.
            answers = []
            for start in range(0, len(unit_ids), scripts.CLUSTER_CALLS_AT_ONCE):
                chunk = unit_ids[start : start + scripts.CLUSTER_CALLS_AT_ONCE]
                answers += await asyncio.gather(
                    *(
                        self._redis.execute_command(*get, keys.site_visitors_key(u, day), **options)
                        for u in chunk
                    ),
                    return_exceptions=True,
                )
            for answer in answers:
                if isinstance(answer, BaseException) and not isinstance(
                    answer, client.CLIENT_ERRORS
                ):
                    raise answer  # cancellation, or a bug: not a Redis failure
        else:
            with client.translated():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for unit in unit_ids:
                        pipe.execute_command(*get, keys.site_visitors_key(unit, day), **options)
                    answers = await pipe.execute()
        # A node that is down leaves its units' sketches out (an estimate too low for now:
        # Postgres keeps the larger of old and new, and a later read has them again).
        failed = [a for a in answers if isinstance(a, BaseException)]
        if failed and len(failed) == len(answers):
            raise client.unavailable(failed[0])
        sketches = [raw for raw in answers if raw and not isinstance(raw, BaseException)]
        # Merged in unit 0's slot; when its node is down, in the first answering unit's.
        answering = [
            u
            for u, a in zip(unit_ids, answers, strict=True)
            if u != site and not (isinstance(a, BaseException))
        ]
        for merge_unit in [site, *answering[:1]]:
            try:
                count = int(
                    await scripts.call(
                        self._redis,
                        scripts.MERGE_VISITORS,
                        keys.visitors_merge_keys(merge_unit),
                        sketches,
                    )
                )
                break
            except CounterUnavailable:
                if merge_unit != site or not answering:
                    raise
        if len(self._visitors) >= SITE_CACHE_MAX:
            self._visitors.clear()
        self._visitors[(site, day)] = (time.monotonic() + SITE_TOTAL_CACHE_S, count)
        return count
