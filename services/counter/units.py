"""A site split by page over units: which unit holds what, and the site's totals summed over
its units (the cached sum of their parts, the union of their visitor sketches).

One `Units` per process, shared by the stores: a load or a baseline applied through one
store drops the cached total the others read.

On a Redis Cluster a node that does not answer costs only its units: their parts are shown as
this process last read them (bounded memory, KNOWN_MAX units), a part it never read is
filled by the caller (from Postgres' flushed totals: `fill`), and while a read is partial the
site total answered is never lower than the last one this process answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

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
# Units whose last part, and sites whose last total answered, a process remembers (LRU): what
# a partial answer is built from while a Cluster node is away.
KNOWN_MAX = 100_000
K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A bounded map that forgets its least recently written entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value last written under `key`, or None."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        """Write `value` under `key`, forgetting the oldest entry past the bound."""
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class SiteTotal:
    """What this process last read of a site's units (a site split over several)."""

    until: float  # time.monotonic() after which the units are read again
    views: dict[str, int]  # unit -> its part of the site total, as last read or answered
    unloaded: bool  # a unit was not loaded at the last read (Redis lost it)
    unreachable: bool  # a unit's node did not answer the last read
    # Units whose node did not answer and whose part this process never knew (not in `views`).
    missing: set[str] = dataclasses.field(default_factory=set)
    reached: bool = True  # at least one unit's node answered the last read
    # Parts answered by scripts since the next read began: newer than what it may bring.
    answered: dict[str, int] = dataclasses.field(default_factory=dict)


class Flushed(Protocol):
    """What Postgres holds of a site (its flushed totals): what a partial read shows of a
    part this process never read."""

    async def flushed_total(self, site: str) -> int:
        """The site's flushed total."""
        ...

    def flushed_pages(
        self, site: str, pages: Sequence[str] | None
    ) -> AsyncIterator[list[tuple[str, int]]]:
        """The flushed totals of `pages` (None: every page), in chunks."""
        ...


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
        self.partial_allowed = isinstance(redis, RedisCluster)
        self._known: Recent[str, int] = Recent(KNOWN_MAX)  # unit -> last part read/answered
        self._shown: Recent[str, int] = Recent(KNOWN_MAX)  # site -> last total answered
        self._visitors_shown: Recent[tuple[str, str], int] = Recent(KNOWN_MAX)

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
        arrive out of order do not make the total shown go back; while a unit is unreachable
        the total is never lower than the last one answered."""
        cached = await self._site_total(site, wait=wait)
        for unit, views in fresh.items():
            cached.views[unit] = max(cached.views.get(unit, views), views)
            cached.answered[unit] = max(cached.answered.get(unit, views), views)
            if unit in cached.missing:
                cached.missing.discard(unit)
            self._known.put(unit, cached.views[unit])
        return self._shown_total(site, cached), cached

    async def fill_flushed(self, site: str, missing: Collection[str], flushed: Flushed) -> int:
        """Fill the `missing` units of `site` (never read, their node away) with their parts
        as flushed to Postgres; the site total to answer now."""
        parts: dict[str, int] = {}
        if missing:
            # A unit's part is the sum of its pages; unit 0 also holds the rest of the site.
            parts = dict.fromkeys(self.of(site), 0)
            async for chunk in flushed.flushed_pages(site, None):
                for page, total in chunk:
                    parts[self.holding(site, page)] += total
            parts[site] = await flushed.flushed_total(site) - sum(
                views for unit, views in parts.items() if unit != site
            )
            parts = {unit: parts[unit] for unit in missing}
        return self.fill(site, parts)

    def fill(self, site: str, parts: Mapping[str, int]) -> int:
        """Take `parts` (unit -> its part, e.g. from Postgres' flushed totals) for the units
        of `site` the last read missed; the site total to answer now."""
        cached = self._totals.get(site)
        for unit, views in parts.items():
            if self._known.get(unit) is None:
                self._known.put(unit, views)
            if cached is not None and unit in cached.missing:
                cached.missing.discard(unit)
                cached.views[unit] = views
        if cached is None:
            return self._shown.get(site) or 0
        return self._shown_total(site, cached)

    def _shown_total(self, site: str, read: SiteTotal) -> int:
        total = sum(read.views.values())
        if read.unreachable:
            # Partial: a part shown as last known may be older than one shown before.
            total = max(total, self._shown.get(site) or 0)
        self._shown.put(site, total)
        return total

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
        missing: set[str] = set()
        unloaded = unreachable = False
        for unit, answer in zip(unit_ids, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, client.CLIENT_ERRORS):
                    raise answer  # cancellation, or a bug: not a Redis failure
                unreachable = True
            elif answer[0] is not None:
                views[unit] = int(answer[1] or 0)
                self._known.put(unit, views[unit])
                continue
            else:
                unloaded = True
            # Lost or unreachable: its last known part until it is back.
            if before is not None and unit in before.views:
                views[unit] = before.views[unit]
            elif (known := self._known.get(unit)) is not None:
                views[unit] = known
            else:
                missing.add(unit)
        if before is not None:
            for unit, value in before.answered.items():  # answered while this read was out
                views[unit] = max(views.get(unit, value), value)
        total = SiteTotal(
            time.monotonic() + SITE_TOTAL_CACHE_S,
            views,
            unloaded,
            unreachable,
            missing=missing,
            reached=not all(isinstance(a, BaseException) for a in answers),
        )
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
        units' sketches, counted in unit 0's slot. On a Cluster with a node away: the union
        of the sketches still reachable, never less than the last count answered."""
        hit = self._visitors.get((site, day))
        if cached and hit is not None and hit[0] > time.monotonic():
            return hit[1]
        unit_ids = self.of(site)
        sketch_keys = [keys.site_visitors_key(unit, day) for unit in unit_ids]
        count: int | None = None
        if self.partial_allowed:
            # Each sketch on its own: a node that is down costs only its units' sketches.
            raws: list[Any] = []
            for start in range(0, len(sketch_keys), scripts.CLUSTER_CALLS_AT_ONCE):
                chunk = sketch_keys[start : start + scripts.CLUSTER_CALLS_AT_ONCE]
                raws += await asyncio.gather(
                    *(self._get_bytes(key) for key in chunk), return_exceptions=True
                )
            failed = [raw for raw in raws if isinstance(raw, BaseException)]
            for raw in failed:
                if not isinstance(raw, client.CLIENT_ERRORS):
                    raise raw  # cancellation, or a bug: not a Redis failure
            sketches = [raw for raw in raws if raw and not isinstance(raw, BaseException)]
            merge = scripts.call(
                self._redis, scripts.MERGE_VISITORS, keys.visitors_merge_keys(site), sketches
            )
            if failed:
                try:
                    count = max(int(await merge), self._visitors_shown.get((site, day)) or 0)
                except CounterUnavailable:
                    count = self._visitors_shown.get((site, day)) or 0
            else:
                count = int(await merge)
        else:
            with client.translated():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in sketch_keys:
                        # A sketch is binary: read it as bytes, send it back as bytes.
                        pipe.execute_command("GET", key, **{NEVER_DECODE: True})
                    sketches = [raw for raw in await pipe.execute() if raw]
            count = int(
                await scripts.call(
                    self._redis, scripts.MERGE_VISITORS, keys.visitors_merge_keys(site), sketches
                )
            )
        if len(self._visitors) >= SITE_CACHE_MAX:
            self._visitors.clear()
        self._visitors[(site, day)] = (time.monotonic() + SITE_TOTAL_CACHE_S, count)
        self._visitors_shown.put((site, day), count)
        return count

    async def _get_bytes(self, key: str) -> Any:
        # A sketch is binary: read it as bytes, send it back as bytes.
        return await self._redis.execute_command("GET", key, **{NEVER_DECODE: True})
