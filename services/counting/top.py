"""The most-read list: a site's most viewed pages of today, this week or this month, live
(flushed daily counts in Postgres plus the views Redis holds unflushed), at most
TOP_CACHE_S stale.

Per process and per (site, period), the ranking of the TOP_KEEP most viewed pages is
computed at most once every TOP_CACHE_S seconds of the app's clock and shared by every
`limit` asked for; concurrent askers share one computation. One computation:

1. Postgres: the site's flushed total (`site_views.views`, which every flush of the site
   changes);
2. Redis: the unflushed views of the period's days, per page (the pending shards);
3. Postgres, in one snapshot: the TOP_KEEP most viewed pages of the period's days, the
   period's views of every page with unflushed views, and the flushed total again.

If the two totals agree, no flush of the site committed between 1 and 3, so Redis was read
against exactly the Postgres state of 3 and no view is counted twice. The merged ranking is
exact: a page outside Postgres' top TOP_KEEP without unflushed views cannot beat any page
of that top (their totals only grow, and ties go by page id either way). Views frozen in a
snapshot that is being flushed are in neither place for that moment: the list may briefly
miss at most that one batch. If a flush slips in every time (tries exhausted), the list is
Postgres' alone (the unflushed views are left out, never counted twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from services.counter import ids
from services.counter.pendingviews import PendingViews
from services.counting.live import LiveCounts
from services.db import titles as db_titles
from services.db import top as db_top

log = logging.getLogger("viewcounter.top")

PERIODS = ("today", "week", "month")
DEFAULT_PERIOD = "today"
TOP_CACHE_S = 60.0  # the contract: at most this stale
TOP_KEEP = 50  # the largest `limit`: the ranking kept per (site, period)
DEFAULT_LIMIT = 10
CONSISTENT_TRIES = 3
CACHE_MAX_ENTRIES = 10_000


class TopDisabled(Exception):
    """The site does not publish its most-read list (`public_top` false)."""


def parse_period(raw: str | None) -> str:
    """`today` (default), `week` or `month`; InvalidId naming `period` otherwise."""
    if raw is None:
        return DEFAULT_PERIOD
    if raw not in PERIODS:
        raise ids.InvalidId("period", "must be today, week or month")
    return raw


def parse_limit(raw: str | None) -> int:
    """How many pages: 1..TOP_KEEP, default DEFAULT_LIMIT; InvalidId naming `limit`."""
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= TOP_KEEP:
        raise ids.InvalidId("limit", f"must be a whole number from 1 to {TOP_KEEP}")
    return int(raw)


def period_days(period: str, today: date) -> tuple[date, date]:
    """The local days (first, last) of `period` as of `today`: today; this week from its
    Monday; this month from its 1st. `last` is always today."""
    if period == "today":
        return today, today
    if period == "week":
        return today - timedelta(days=today.weekday()), today
    if period == "month":
        return today.replace(day=1), today
    raise ValueError(f"unknown period {period!r}")


def days_between(first: date, last: date) -> list[str]:
    """Every local day from `first` to `last` (inclusive), as YYYY-MM-DD."""
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


@dataclass(frozen=True, slots=True)
class Ranked:
    """One page of the list: its id, title (None: unknown) and views in the period."""

    page: str
    title: str | None
    views: int


@dataclass(frozen=True)
class TopList:
    """A site's most viewed pages of a period (at most the limit asked for)."""

    site: str
    period: str
    first: date
    last: date
    pages: list[Ranked]

    def as_dict(self) -> dict[str, object]:
        """The JSON shape of GET /v1/sites/{site}/top."""
        return {
            "site": self.site,
            "period": self.period,
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "pages": [{"page": r.page, "title": r.title, "views": r.views} for r in self.pages],
        }


@dataclass(frozen=True)
class _Entry:
    first: date
    last: date
    until: float  # app clock
    pages: list[Ranked]


class MostRead:
    """The most-read lists of every site, cached per process (see the module docstring)."""

    def __init__(
        self,
        live: LiveCounts,
        pending: PendingViews,
        top: db_top.TopPages,
        titles: db_titles.Titles,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._live = live
        self._pending = pending
        self._top = top
        self._titles = titles
        self._clock = clock
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._computing: dict[tuple[str, str, date, date], asyncio.Task[_Entry]] = {}

    async def top(self, site: str, period: str, limit: int) -> TopList:
        """The `limit` most viewed pages of `site` in `period`; UnknownSite, TopDisabled."""
        config = await self._live.site_config(site)
        if not config.public_top:
            raise TopDisabled(site)
        first, last = period_days(period, date.fromisoformat(await self._live.today(site)))
        entry = self._cache.get((site, period))
        if (
            entry is None
            or entry.until <= self._clock()
            or (entry.first, entry.last)
            != (
                first,
                last,
            )
        ):
            entry = await self._computed(site, period, first, last)
        return TopList(site, period, first, last, entry.pages[:limit])

    async def _computed(self, site: str, period: str, first: date, last: date) -> _Entry:
        key = (site, period, first, last)
        task = self._computing.get(key)
        if task is None:  # one computation per key at a time, however many wait on it
            task = asyncio.create_task(self._compute(site, period, first, last))
            self._computing[key] = task
            task.add_done_callback(lambda _: self._computing.pop(key, None))
        return await asyncio.shield(task)

    async def _compute(self, site: str, period: str, first: date, last: date) -> _Entry:
        started = self._clock()
        days = days_between(first, last)
        pending: dict[str, int] = {}
        ranking: db_top.Ranking | None = None
        for _ in range(CONSISTENT_TRIES):
            before = await self._top.flushed_views(site)
            pending = await self._pending.of_days(site, days)
            ranking = await self._top.ranking(site, first, last, TOP_KEEP, also=list(pending))
            if ranking.flushed_views == before:
                break
        else:
            log.info(
                "a flush of %s came between every read: its list leaves out unflushed views", site
            )
            pending = {}
        assert ranking is not None
        totals = dict(ranking.pages)
        for page, views in pending.items():
            totals[page] = ranking.views_of.get(page, 0) + views
        best = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:TOP_KEEP]
        titles = await self._titles.shown(site, [page for page, _ in best])
        entry = _Entry(
            first,
            last,
            started + TOP_CACHE_S,
            [Ranked(page, titles.get(page), views) for page, views in best],
        )
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[(site, period)] = entry
        return entry
