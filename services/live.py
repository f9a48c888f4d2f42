"""Live counts: take hits and read totals in Redis; load a site from Postgres when Redis lacks it.

A site is "loaded" in Redis once its totals were copied from Postgres. Hits and reads of an
unloaded site are refused by the scripts (nothing written), this module loads the site, then
tries once more. That is how a new site starts, and how Redis is refilled after it lost its
data, without ever showing a count lower than one shown before.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.counter import store as counter_store
from services.counter import visitors
from services.db import repository

TIMEZONE_CACHE_S = 60.0
UNKNOWN_SITE_CACHE_S = 5.0
CACHE_MAX_SITES = 10_000


class UnknownSite(Exception):
    """The site is not registered."""


class InvalidTimezone(ValueError):
    """The time zone is not an IANA name this machine knows."""


def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name like Asia/Ho_Chi_Minh, or InvalidTimezone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTimezone(f"unknown time zone {name!r}") from None


class LiveCounts:
    """Records hits and reads live totals for every site."""

    def __init__(
        self,
        store: counter_store.CounterStore,
        repo: repository.Repository,
        *,
        dedupe_window_s: int = 0,
        rate_limit_per_min: int = 0,
        max_pages_per_site: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._repo = repo
        self._dedupe_window_s = dedupe_window_s
        self._rate_limit = rate_limit_per_min
        self._max_pages = max_pages_per_site
        self._clock = clock
        self._salt: tuple[str, bytes] | None = None
        self._zones: dict[str, tuple[ZoneInfo, float]] = {}
        self._unknown: dict[str, float] = {}
        self._loading: dict[str, asyncio.Task[str]] = {}

    async def hit(
        self, site: str, page: str, *, visitor: str | None, ip: str, user_agent: str
    ) -> counter_store.HitResult:
        """Take one view of `page` (already validated): counted unless a repeat or over the
        client's rate; answers the outcome and the live totals."""
        now = self._clock()
        tz = await self._zone(site)
        salt = await self._daily_salt(now)
        request = counter_store.HitRequest(
            site=site,
            page=page,
            day=datetime.fromtimestamp(now, tz).date().isoformat(),
            seen_token=(
                visitors.seen_token(salt, site, page, visitor, ip, user_agent)
                if self._dedupe_window_s
                else "-"
            ),
            dedupe_window_s=self._dedupe_window_s,
            client_token=visitors.client_token(salt, site, ip) if self._rate_limit else "-",
            minute=int(now // 60),
            rate_limit=self._rate_limit,
            max_pages=self._max_pages,
        )
        result = await self._store.hit(request)
        if result is None:
            await self.ensure_loaded(site)
            result = await self._store.hit(request)
            if result is None:
                raise counter_store.CounterUnavailable("site totals could not be loaded")
        return result

    async def counts(self, site: str, pages: Sequence[str]) -> counter_store.Counts:
        """Live totals of `site` and `pages` without counting."""
        self._refuse_known_unknown(site)
        result = await self._store.counts(site, pages)
        if result is None:
            await self.ensure_loaded(site)
            result = await self._store.counts(site, pages)
            if result is None:
                raise counter_store.CounterUnavailable("site totals could not be loaded")
        return result

    async def register(self, site: str, timezone: str) -> bool:
        """Create or update a site in Postgres and Redis; True when it was created."""
        zone(timezone)
        created = await self._repo.upsert_site(site, timezone)
        self._unknown.pop(site, None)
        self._zones.pop(site, None)
        await self._store.set_timezone(site, timezone)
        await self.ensure_loaded(site)
        return created

    async def ensure_loaded(self, site: str) -> str:
        """Copy the site's totals from Postgres into Redis unless they are there; its time zone.

        Concurrent callers in this process share one load; other processes serialise on the
        site's row lock in Postgres, and the scripts make every load after the first a no-op.
        """
        task = self._loading.get(site)
        if task is None:
            task = asyncio.create_task(self._load(site))
            self._loading[site] = task
            task.add_done_callback(lambda _: self._loading.pop(site, None))
        return await asyncio.shield(task)

    async def _load(self, site: str) -> str:
        async with self._repo.site_load(site) as load:
            if load is None:
                self._remember_unknown(site)
                raise UnknownSite(site)
            async for chunk in load.page_totals():
                if not await self._store.load_pages(site, chunk):
                    return load.timezone  # another process finished the load
            await self._store.load_site(site, secrets.token_hex(8), load.total, load.timezone)
            return load.timezone

    async def _daily_salt(self, now: float) -> bytes:
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        if self._salt is None or self._salt[0] != day:
            self._salt = (day, await self._store.daily_salt(day))
        return self._salt[1]

    async def _zone(self, site: str) -> ZoneInfo:
        now = self._clock()
        cached = self._zones.get(site)
        if cached is not None and cached[1] > now:
            return cached[0]
        self._refuse_known_unknown(site)
        name = await self._store.site_timezone(site)
        if name is None:
            name = await self.ensure_loaded(site)
        try:
            tz = zone(name)
        except InvalidTimezone:
            tz = ZoneInfo("UTC")  # only a hand-edited row can get here; count, don't fail
        if len(self._zones) >= CACHE_MAX_SITES:
            self._zones.clear()
        self._zones[site] = (tz, now + TIMEZONE_CACHE_S)
        return tz

    def _refuse_known_unknown(self, site: str) -> None:
        until = self._unknown.get(site)
        if until is not None:
            if until > self._clock():
                raise UnknownSite(site)
            del self._unknown[site]

    def _remember_unknown(self, site: str) -> None:
        if len(self._unknown) >= CACHE_MAX_SITES:
            self._unknown.clear()
        self._unknown[site] = self._clock() + UNKNOWN_SITE_CACHE_S
