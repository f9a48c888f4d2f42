"""The statistics block's Redis side: per unit, views by local day (the days hash) and the
visitors online (per-minute HyperLogLogs), read with one stats.lua call per unit; for a site
split over several units, their sum (read fresh) and the union of their sketches (reused for
at most SITE_TOTAL_CACHE_S of the api's clock)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from redis.client import NEVER_DECODE

from services.counter import calls, client, keys, scripts
from services.counter.client import Client
from services.counter.errors import CounterUnavailable
from services.counter.groupcommit import StatsBatcher
from services.counter.units import (
    KNOWN_MAX,
    SITE_CACHE_MAX,
    SITE_TOTAL_CACHE_S,
    Flushed,
    Recent,
    Units,
)


@dataclass(frozen=True, slots=True)
class LiveStats:
    """What Redis holds for a site's statistics block at one moment."""

    site_views: int  # the footer total (views + baseline + pending), as counts answers it
    online: int  # distinct visitors seen in the online window
    days: dict[str, int]  # local day -> views counted under it, for the days asked
    # A Cluster node did not answer: its units' parts as last known (a lower bound, never
    # lower than this process answered before).
    partial: bool = False


def add_day_parts(
    parts: dict[str, dict[str, int]], units: Units, site: str, rows: Iterable[tuple[str, str, int]]
) -> None:
    """Add Postgres' (page, day, views) rows to each unit's part of the site's daily views
    (`parts`: unit -> day -> views): a site of one unit takes the site's days (page ""), a
    unit of a split site its own pages' (whose sum is the site's day: invariant 2)."""
    for page, day, views in rows:
        unit = site if units.count == 1 else units.holding(site, page)
        days = parts.setdefault(unit, {})
        days[day] = days.get(day, 0) + views


def oldest_day_kept(now_s: float) -> date:
    """The oldest local day the days hashes keep at clock `now_s`, in any time zone (UTC's
    date minus keys.DAYS_KEPT: a zone is at most a day from UTC, and this month needs 31)."""
    return datetime.fromtimestamp(now_s, UTC).date() - timedelta(days=keys.DAYS_KEPT)


class StatsStore:
    """Reads of the statistics block; Redis errors raise CounterUnavailable. Never closes
    the client it is given."""

    def __init__(
        self,
        redis: Client,
        units: Units,
        online_window_s: int,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._units = units
        self._window_s = online_window_s
        self._batcher = StatsBatcher(redis, timeout_s, clock)
        # A split site's visitors online: (site, minute) -> (until, count), by the api's clock.
        self._online: dict[tuple[str, int], tuple[float, int]] = {}
        # A split site's last answer: site -> (views by day, online), what a partial answer
        # never goes below.
        self._shown: Recent[str, tuple[dict[str, int], int]] = Recent(KNOWN_MAX)
        # A split site's units' views by day as last read: unit -> day -> views.
        self._unit_days: Recent[str, dict[str, int]] = Recent(KNOWN_MAX)

    async def read(
        self, site: str, now_s: float, days: Sequence[str], flushed: Flushed | None = None
    ) -> LiveStats | None:
        """The site's total, its visitors online at clock `now_s` and its views on each of
        `days`; None when the site (a unit of it) is not loaded. A site split over a Cluster
        whose node does not answer is answered `partial` (its total as counts answers it,
        the periods and visitors online never lower than this process answered before)."""
        minute = int(now_s // 60)
        minutes = calls.online_minutes(minute, self._window_s)
        if self._units.count == 1:
            answer = await self._batcher.submit((site, tuple(minutes), tuple(days)))
            if answer is None or answer[0] == 0:
                return None
            views = dict(zip(days, answer[3:], strict=True))
            return LiveStats(int(answer[1]), int(answer[2]), views)
        return await self._read_split(site, now_s, minute, minutes, days, flushed)

    async def _read_split(
        self,
        site: str,
        now_s: float,
        minute: int,
        minutes: Sequence[int],
        days: Sequence[str],
        flushed: Flushed | None,
    ) -> LiveStats | None:
        # Split: every unit's days and part of the total in one pipeline (always fresh, so
        # a period shown includes every hit answered before); the union of the units'
        # online sketches costs two more round trips, so it is reused for a second.
        unit_ids = self._units.of(site)
        answers = await self._unit_answers(unit_ids, days)
        if any(answer[0] == 0 for answer in answers.values()):
            return None
        partial = len(answers) < len(unit_ids)
        per_day = dict.fromkeys(days, 0)
        for unit in unit_ids:
            answer = answers.get(unit)
            if answer is not None:
                unit_days = dict(zip(days, map(int, answer[3:]), strict=True))
                self._unit_days.put(unit, unit_days)
            else:  # its node is away: its days as last read
                unit_days = self._unit_days.get(unit) or {}
            for day in days:
                per_day[day] += unit_days.get(day, 0)
        fresh = {unit: int(answer[1]) for unit, answer in answers.items()}
        site_views, state = await self._units.site_views(site, fresh, wait=False)
        if state.unreachable or partial:
            if flushed is None:
                raise CounterUnavailable("a Redis node holding part of the site does not answer")
            site_views = await self._units.fill_flushed(site, state.missing, flushed)
            partial = True
        shown = self._shown.get(site)
        cached = self._online.get((site, minute))
        if cached is not None and cached[0] > now_s:
            online = cached[1]
        elif partial:
            online = shown[1] if shown is not None else 0
        else:
            online = await self._online_union(site, unit_ids, minutes)
            if len(self._online) >= SITE_CACHE_MAX:
                self._online.clear()
            self._online[(site, minute)] = (now_s + SITE_TOTAL_CACHE_S, online)
        if partial and shown is not None:
            # The units away are missing from the periods: never below the last answer.
            for day in days:
                per_day[day] = max(per_day[day], shown[0].get(day, 0))
        self._shown.put(site, (per_day, online))
        return LiveStats(site_views, online, per_day, partial)

    async def _unit_answers(
        self, unit_ids: Sequence[str], days: Sequence[str]
    ) -> dict[str, list[Any]]:
        """Each unit's stats.lua answer; on a Cluster, only the units whose node answered
        (CounterUnavailable when none did)."""
        call_list = [calls.stats_call(unit, (), days) for unit in unit_ids]
        if not self._units.partial_allowed:
            return dict(zip(unit_ids, await scripts.run(self._redis, call_list), strict=True))
        with client.translated():
            results, _ = await scripts.run_scripts(self._redis, call_list)
        answers = {
            unit: result
            for unit, result in zip(unit_ids, results, strict=True)
            if not isinstance(result, Exception)
        }
        if not answers:
            client.raise_failed(results)
        return answers

    async def close(self) -> None:
        """Finish the reads in flight."""
        await self._batcher.drain()

    async def _online_union(
        self, site: str, unit_ids: Sequence[str], minutes: Sequence[int]
    ) -> int:
        """Distinct visitors online over a split site's units: their minute sketches (each
        unit in its own slot) read as bytes and merged in unit 0's slot."""
        with client.translated():
            async with self._redis.pipeline(transaction=False) as pipe:
                for unit in unit_ids:
                    for minute in minutes:
                        pipe.execute_command(
                            "GET", keys.online_key(unit, minute), **{NEVER_DECODE: True}
                        )
                sketches = [raw for raw in await pipe.execute() if raw]
        if not sketches:
            return 0
        merge_keys = keys.visitors_merge_keys(site)
        return int(await scripts.call(self._redis, scripts.MERGE_VISITORS, merge_keys, sketches))
