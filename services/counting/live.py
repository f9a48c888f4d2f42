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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.counter import bots, visitors
from services.counter import stats as counter_stats
from services.counter.errors import CounterUnavailable
from services.counter.hitstore import HitStore
from services.counter.outcomes import Counts, HitRequest, HitResult, Outcome, PageRule
from services.counter.siteconfig import SiteConfig
from services.counting import stats
from services.db import audit as db_audit
from services.db import sites as db_sites

# How long a process uses a site's settings before reading them again: a change made through
# another process reaches this one within this time.
SITE_CONFIG_CACHE_S = 10.0
UNKNOWN_SITE_CACHE_S = 5.0
CACHE_MAX_SITES = 10_000
T = TypeVar("T")


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


# How long a batch sent with an Idempotency-Key is remembered by default
# (VIEWCOUNTER_IDEMPOTENCY_TTL): sent again within it, it counts nothing twice.
IDEMPOTENCY_KEEP_S = 86400
# A batch sent without a key is recorded only for our own retry inside its request (after a
# site load, hit_batch sends every call again): records deleted when the request is answered,
# and expiring after this long if the process dies first.
OWN_RETRY_KEEP_S = 3600


@dataclass(frozen=True, slots=True)
class View:
    """One page view in a batch: the page, and who viewed it (as the collector saw them)."""

    page: str
    visitor: str | None = None
    ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class _Site:
    config: SiteConfig
    zone: ZoneInfo
    until: float
    page_rule: PageRule  # of a page its patterns allow (built once, not per hit)


class LiveCounts:
    """Records hits and reads live totals for every site."""

    def __init__(
        self,
        store: HitStore,
        sites: db_sites.Sites,
        *,
        dedupe_window_s: int = 0,
        rate_limit_per_min: int = 0,
        max_pages_per_site: int = 0,
        idempotency_keep_s: int = IDEMPOTENCY_KEEP_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.idempotency_keep_s = idempotency_keep_s
        self._sites_db = sites
        self._dedupe_window_s = dedupe_window_s
        self._rate_limit = rate_limit_per_min
        self._max_pages = max_pages_per_site
        self._clock = clock
        self._salt: tuple[str, bytes] | None = None
        self._sites: dict[str, _Site] = {}
        self._unknown: dict[str, float] = {}
        self._loading: dict[str, asyncio.Task[SiteConfig]] = {}

    async def hit(
        self,
        site: str,
        page: str,
        *,
        visitor: str | None,
        ip: str,
        user_agent: str,
        title: str | None = None,
    ) -> HitResult:
        """Take one view of `page` (already validated): counted unless a known bot's, a
        repeat, over the client's rate or a page the site does not count; answers the
        outcome and the live totals. `title` (validated) is learned as the page's title
        where the site learns titles, from a counted or duplicate hit; ignored elsewhere."""
        if bots.is_bot(user_agent):
            return self._uncounted(Outcome.BOT, await self.counts(site, [page]), page)
        request = await self._request(site, page, visitor, ip, user_agent, self._rate_limit, title)
        if request is None:
            return self._uncounted(Outcome.UNKNOWN_PAGE, await self.counts(site, [page]), page)
        result = await self._store.hit(request)
        if result is None:
            result = await self._after_load(site, lambda: self._store.hit(request))
        return result

    @staticmethod
    def _uncounted(outcome: Outcome, counts: Counts, page: str) -> HitResult:
        return HitResult(outcome, counts.pages[page], counts.site_views)

    async def _after_load(self, site: str, attempt: Callable[[], Awaitable[T | None]]) -> T:
        """Load the site from Postgres, then `attempt` (a call the scripts refused, the site
        not being loaded) once more; CounterUnavailable when it is refused again."""
        await self.ensure_loaded(site)
        with self._store.deadline():  # the load may take long: a fresh wait for Redis after it
            result = await attempt()
        if result is None:
            raise CounterUnavailable("site totals could not be loaded")
        return result

    def redis_deadline(self) -> AbstractContextManager[None]:
        """Inside the block, the request's Redis calls are all answered within
        VIEWCOUNTER_REDIS_TIMEOUT from now, or CounterUnavailable (a site load from Postgres
        excepted: the wait starts again after it)."""
        return self._store.deadline()

    async def claim_idempotency(self, site: str, token: str, body_hash: str) -> str | None:
        """Record that the batch `token` carries `body_hash` (for idempotency_keep_s); the
        hash recorded before, or None when this is the first time."""
        return await self._store.claim_idempotency(
            site, token, body_hash, self.idempotency_keep_s
        )

    async def hit_batch(
        self, site: str, views: Sequence[View], idempotency_token: str | None = None
    ) -> dict[Outcome, int]:
        """Take many page views of `site` sent by a trusted collector (no rate limit: the
        views come from many clients); how many had each outcome (a known bot's view is not
        counted). With `idempotency_token`, idempotent under it for idempotency_keep_s: sent
        again, nothing counts twice and the same tallies are answered. Without, only our own
        retry after a site load is protected (OWN_RETRY_KEEP_S, records deleted after)."""
        tally: dict[Outcome, int] = {}
        requests: list[HitRequest] = []
        for view in views:
            request = None
            if bots.is_bot(view.user_agent):
                outcome = Outcome.BOT
            else:
                request = await self._request(
                    site, view.page, view.visitor, view.ip, view.user_agent, rate_limit=0
                )
                outcome = Outcome.UNKNOWN_PAGE
            if request is None:
                tally[outcome] = tally.get(outcome, 0) + 1
            else:
                requests.append(request)
        if requests:
            own = idempotency_token is None
            token = secrets.token_hex(16) if idempotency_token is None else idempotency_token
            keep_s = OWN_RETRY_KEEP_S if own else self.idempotency_keep_s

            def attempt() -> Awaitable[dict[Outcome, int] | None]:
                return self._store.hit_batch(requests, token, keep_s, forget=own)

            counted = await attempt()
            if counted is None:
                counted = await self._after_load(site, attempt)
            for outcome, n in counted.items():
                tally[outcome] = tally.get(outcome, 0) + n
        return tally

    async def _request(
        self,
        site: str,
        page: str,
        visitor: str | None,
        ip: str,
        user_agent: str,
        rate_limit: int,
        title: str | None = None,
    ) -> HitRequest | None:
        """The hit to send to Redis, or None when the site's page rules refuse `page`."""
        now = self._clock()
        cached = await self._site(site)
        config = cached.config
        if not config.restricts_pages or config.matches_pattern(page):
            page_rule = cached.page_rule
        elif config.registered_pages_only:
            page_rule = PageRule.only_known()
        else:
            return None
        window = self._dedupe_window_s if config.dedupe_window is None else config.dedupe_window
        salt = await self._daily_salt(now)
        visitor_token = visitors.visitor_token(salt, site, visitor, ip, user_agent)
        return HitRequest(
            site=site,
            page=page,
            day=datetime.fromtimestamp(now, cached.zone).date().isoformat(),
            seen_token=visitors.seen_token(salt, visitor_token, page) if window else "-",
            dedupe_window_s=window,
            client_token=visitors.client_token(salt, site, ip) if rate_limit else "-",
            time_s=int(now),
            rate_limit=rate_limit,
            page_rule=page_rule,
            visitor_token=visitor_token,
            title=title if title is not None and config.learn_titles else "",
        )

    async def counts(self, site: str, pages: Sequence[str]) -> Counts:
        """Live totals of `site` and `pages`, and today's distinct visitors, without counting."""
        self._refuse_known_unknown(site)
        day = await self.today(site)
        # A Cluster node away: its parts as last known, else as flushed to Postgres.
        result = await self._store.counts(site, day, pages, self._sites_db)
        if result is None:
            result = await self._after_load(
                site, lambda: self._store.counts(site, day, pages, self._sites_db)
            )
        return result

    async def stats(self, site: str) -> stats.Stats:
        """The site's statistics block, live: views of today, yesterday, this week and this
        month in its local calendar, visitors online, and the footer total."""
        self._refuse_known_unknown(site)
        cached = await self._site(site)
        now = self._clock()
        periods = stats.Periods(datetime.fromtimestamp(now, cached.zone).date())
        days = periods.days
        read = await self._store.stats.read(site, now, days, self._sites_db)
        if read is None:
            read = await self._after_load(
                site, lambda: self._store.stats.read(site, now, days, self._sites_db)
            )
        return stats.Stats.of(cached.config.timezone, periods, read)

    async def today(self, site: str) -> str:
        """The site's local date now (YYYY-MM-DD)."""
        cached = await self._site(site)
        return datetime.fromtimestamp(self._clock(), cached.zone).date().isoformat()

    async def site_config(self, site: str) -> SiteConfig:
        """The site's settings (cached for SITE_CONFIG_CACHE_S); UnknownSite if unregistered."""
        return (await self._site(site)).config

    async def register(
        self, site: str, changes: Mapping[str, Any], author: db_audit.Author
    ) -> tuple[SiteConfig, bool]:
        """Create a site or change its settings, in Postgres (logged as done by `author`)
        then Redis; the settings now, and whether the site was created. Raises
        siteconfig.InvalidSetting, InvalidTimezone."""
        if "timezone" in changes and changes["timezone"] is not None:
            zone(changes["timezone"])
        config, created = await self._sites_db.put_site(site, changes, author)
        self._unknown.pop(site, None)
        self._sites.pop(site, None)
        await self._store.set_config(site, config)
        await self.ensure_loaded(site)
        return config, created

    async def register_pages(
        self,
        site: str,
        pages: Sequence[str],
        titles: Mapping[str, str | None],
        author: db_audit.Author,
    ) -> tuple[list[str], int]:
        """Make pages known to a site (for sites that count only registered pages) and set
        the admin titles given, in one logged change; the pages that were new and how many
        titles changed. UnknownSite when the site is not registered."""
        config = await self.site_config(site)
        new, titles_set = await self._sites_db.register_pages(site, pages, titles, author)
        await self._store.set_config(site, config, new)
        return new, titles_set

    async def admin_retry_after(
        self, ip: str, limit: int, *, key_id: str | None = None
    ) -> int | None:
        """Count an admin request of the key `key_id` (when given), else from `ip`; seconds
        to wait when it is over `limit` per clock minute, else None. Open when Redis is down:
        admin and report routes that do not need Redis keep working, and the ones that do
        answer 503 by themselves."""
        if not limit:
            return None
        now = self._clock()
        caller = ("admin", ip) if key_id is None else ("admin-key", key_id)
        try:
            salt = await self._daily_salt(now)
            count = await self._store.count_admin_request(
                visitors.client_token(salt, *caller), int(now // 60)
            )
        except CounterUnavailable:
            return None
        if count <= limit:
            return None
        return max(1, 60 - int(now % 60))

    async def ensure_loaded(self, site: str) -> SiteConfig:
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

    async def _load(self, site: str) -> SiteConfig:
        async with self._sites_db.site_load(site) as load:
            if load is None:
                self._remember_unknown(site)
                raise UnknownSite(site)
            since = counter_stats.oldest_day_kept(self._clock())
            await self._store.load(
                site,
                load.total,
                load.config,
                load.page_totals(),
                lambda by_page: load.day_rows(since, by_page=by_page),
            )
            return load.config

    async def _daily_salt(self, now: float) -> bytes:
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        if self._salt is None or self._salt[0] != day:
            self._salt = (day, await self._store.daily_salt(day))
        return self._salt[1]

    async def _site(self, site: str) -> _Site:
        now = self._clock()
        cached = self._sites.get(site)
        if cached is not None and cached.until > now:
            return cached
        self._refuse_known_unknown(site)
        config = await self._store.site_config(site)
        if config is None:
            config = await self.ensure_loaded(site)
        try:
            tz = zone(config.timezone)
        except InvalidTimezone:
            tz = ZoneInfo("UTC")  # only a hand-edited row can get here; count, don't fail
        if len(self._sites) >= CACHE_MAX_SITES:
            self._sites.clear()
        max_pages = self._max_pages if config.max_pages is None else config.max_pages
        cached = _Site(config, tz, now + SITE_CONFIG_CACHE_S, PageRule.at_most(max_pages))
        self._sites[site] = cached
        return cached

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
