"""What the api's counting calls in Redis: hits, reads of live totals, loads of a site from
Postgres' totals, its settings, and the small keys beside them (salt, rate, idempotency)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from services.counter import calls, client, keys, scripts
from services.counter.client import Client
from services.counter.errors import CounterUnavailable
from services.counter.groupcommit import (
    MAX_HITS_PER_CALL,
    CountsBatcher,
    CountsRequest,
    HitBatcher,
    UnitCounts,
)
from services.counter.outcomes import Counts, HitRequest, HitResult, Outcome, hit_tally
from services.counter.scripts import Call
from services.counter.siteconfig import SiteConfig
from services.counter.stats import StatsStore, add_day_parts
from services.counter.units import KNOWN_MAX, Flushed, Recent, Units

SALT_TTL_S = 2 * 86400
# How long a hit or a batched read may wait for Redis, from the moment it is taken: the api
# passes VIEWCOUNTER_REDIS_TIMEOUT (whose default this is).
DEFAULT_TIMEOUT_S = 2.0
ADMIN_RATE_TTL_S = 120  # a clock minute's counter outlives its minute


class HitStore:
    """Counting state in Redis as the api uses it; Redis errors raise CounterUnavailable.

    Each site is split by page over `units` (keys.py): methods that take a site fan out to
    its units. The store never closes the client it is given.
    """

    def __init__(
        self,
        redis: Client,
        units: Units,
        online_window_s: int = calls.ONLINE_WINDOW_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._units = units
        self._count = units.count
        self._online_window_s = online_window_s
        # Each call below is answered within this (or the enclosing deadline), the wait for a
        # pooled connection included (the socket timeout alone lets a call take twice as long).
        self._timeout_s = timeout_s
        self._hits = HitBatcher(redis, units.count, timeout_s, online_window_s, clock)
        self._counts = CountsBatcher(redis, timeout_s, clock)
        self.stats = StatsStore(redis, units, online_window_s, timeout_s, clock)
        # A split site's pages as last answered: (site, page) -> (views, visitors).
        self._pages_known: Recent[tuple[str, str], tuple[int, int]] = Recent(KNOWN_MAX)

    def deadline(self) -> AbstractContextManager[None]:
        """Inside the block, this store's calls are all answered within the timeout from now
        (or fail with CounterUnavailable): a request's whole wait for Redis."""
        return client.deadline(self._timeout_s)

    async def close(self) -> None:
        """Finish the calls in flight."""
        await self._hits.drain()
        await self._counts.drain()
        await self.stats.close()

    async def hit(self, request: HitRequest) -> HitResult | None:
        """Take one page view; None when the site (the page's unit of it) is not loaded:
        nothing was written then."""
        result = await self._hits.submit(request)
        if result is None or self._count == 1:
            return result
        unit = calls.unit_of(request.site, request.page, self._count)
        site_views, _ = await self._units.site_views(
            request.site, {unit: result.site_views}, wait=False
        )
        return HitResult(result.outcome, result.page_views, site_views)

    async def hit_batch(
        self,
        requests: Sequence[HitRequest],
        idempotency_token: str,
        keep_s: int,
        *,
        forget: bool = False,
    ) -> dict[Outcome, int] | None:
        """Take many page views of one site, MAX_HITS_PER_CALL per script call (per unit);
        how many had each outcome. Each call leaves a record of its tallies under
        `idempotency_token` and its position for `keep_s`: sent again (a retry after a
        failure part-way), the calls that ran answer their tallies and count nothing. With
        `forget`, the records are deleted once every call answered (no retry will come).
        None when the site (a unit of it) is not loaded: the records of the calls that ran
        stay, for the retry."""
        groups: dict[str, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(self._units.holding(request.site, request.page), []).append(position)
        call_list: list[Call] = []
        records: list[str] = []
        for index, (unit, members) in enumerate(groups.items()):
            # The same body always gives the same calls, so a retry finds their records.
            prefix = idempotency_token if self._count == 1 else f"{idempotency_token}:u{index}"
            for n, i in enumerate(range(0, len(members), MAX_HITS_PER_CALL)):
                chunk = members[i : i + MAX_HITS_PER_CALL]
                token = f"{prefix}:{n}"
                records.append(keys.idempotency_key(unit, token))
                call_list.append(
                    calls.hits_call(
                        unit,
                        [requests[p] for p in chunk],
                        self._count,
                        token,
                        keep_s,
                        self._online_window_s,
                        self._units.per_slot,
                    )
                )
        tally: dict[Outcome, int] = {}
        for answer in await scripts.run(self._redis, call_list, self._timeout_s):
            counted = hit_tally(answer)
            if counted is None:
                return None  # the calls that ran answer the same when sent again
            for outcome, n in counted.items():
                tally[outcome] = tally.get(outcome, 0) + n
        if forget:
            # One key at a time: the records of a split site live on several nodes.
            await self._pipeline(lambda pipe: [pipe.unlink(record) for record in records])
        return tally

    async def counts(
        self, site: str, day: str, pages: Sequence[str], flushed: Flushed | None = None
    ) -> Counts | None:
        """Live totals of `site` and `pages`, and their distinct visitors on local `day`;
        None when the site (a unit of it) is not loaded. Reads taken together leave
        together (group commit, as hits do).

        A site split over a Cluster whose node does not answer is answered `partial`: that
        node's units and pages as this process last answered them, else as `flushed` to
        Postgres (without it: CounterUnavailable), never lower than answered before."""
        groups: dict[str, list[str]] = {site: []} if self._count == 1 else {}
        for page in dict.fromkeys(pages):
            groups.setdefault(calls.unit_of(site, page, self._count), []).append(page)
        answers = await asyncio.gather(
            *(self._counts.submit(CountsRequest(u, day, p)) for u, p in groups.items()),
            return_exceptions=True,
        )
        if self._count == 1:
            answer = answers[0]
            if isinstance(answer, BaseException):
                raise answer
            if answer is None:
                return None
            per_page = answer[2]
            return Counts(
                site_views=answer[0],
                pages={page: per_page[page][0] for page in pages},
                site_visitors=answer[1],
                page_visitors={page: per_page[page][1] for page in pages},
            )
        return await self._split_counts(site, day, pages, groups, answers, flushed)

    async def _split_counts(
        self,
        site: str,
        day: str,
        pages: Sequence[str],
        groups: dict[str, list[str]],
        answers: Sequence[UnitCounts | BaseException],
        flushed: Flushed | None,
    ) -> Counts | None:
        per_page: dict[str, tuple[int, int]] = {}
        fresh: dict[str, int] = {}
        down: list[str] = []
        for unit, answer in zip(groups, answers, strict=True):
            if isinstance(answer, CounterUnavailable) and self._units.partial_allowed:
                down += groups[unit]  # a node away: its pages as last known
                continue
            if isinstance(answer, BaseException):
                raise answer  # every read was answered (no error left unread)
            if answer is None:
                return None
            fresh[unit] = answer[0]
            per_page.update(answer[2])
        site_views, state = await self._units.site_views(site, fresh)
        if state.unloaded and not state.unreachable:
            return None
        partial = state.unreachable or bool(down)
        if partial:
            if not state.reached and not fresh:
                raise CounterUnavailable("no Redis node holding part of the site answers")
            if flushed is None:
                raise CounterUnavailable("a Redis node holding part of the site does not answer")
            site_views = await self._fill(site, state.missing, down, per_page, flushed)
        for page, views_visitors in per_page.items():
            self._pages_known.put((site, page), views_visitors)
        return Counts(
            site_views=site_views,
            pages={page: per_page[page][0] for page in pages},
            site_visitors=await self._units.site_visitors(site, day),
            page_visitors={page: per_page[page][1] for page in pages},
            partial=partial,
        )

    async def _fill(
        self,
        site: str,
        missing_units: Collection[str],
        down_pages: Sequence[str],
        per_page: dict[str, tuple[int, int]],
        flushed: Flushed,
    ) -> int:
        """Fill what a partial read could not get: pages of nodes away (into `per_page`), as
        last answered else as flushed; units never read, as flushed. The site total now."""
        unknown: list[str] = []
        for page in down_pages:
            known = self._pages_known.get((site, page))
            if known is None:
                unknown.append(page)
            else:
                per_page[page] = known
        if unknown:
            found: dict[str, int] = {}
            async for chunk in flushed.flushed_pages(site, unknown):
                found.update(chunk)
            for page in unknown:
                per_page[page] = (found.get(page, 0), 0)
        return await self._units.fill_flushed(site, missing_units, flushed)

    async def site_config(self, site: str) -> SiteConfig | None:
        """The settings the site was loaded with, or None when it is not loaded."""
        with client.translated():
            gen, tz, cfg = await client.bounded(
                self._timeout_s,
                self._redis.hmget(
                    keys.site_key(site), [keys.SITE_GEN, keys.SITE_TZ, keys.SITE_CONFIG]
                ),
            )
        if gen is None or tz is None:
            return None
        return SiteConfig.from_json(cast(str | None, cfg), cast(str, tz))

    async def set_config(
        self, site: str, config: SiteConfig, new_pages: Sequence[str] = ()
    ) -> bool:
        """Record changed settings (and newly registered pages) of a loaded site, in each of its
        units; False when a unit is not loaded (nothing written there): its next load brings
        them from Postgres."""
        groups: dict[str, list[str]] = {unit: [] for unit in self._units.of(site)}
        for page in new_pages:
            groups[self._units.holding(site, page)].append(page)
        call_list = [
            calls.pages_call(
                scripts.SET_CONFIG, unit, (config.timezone, config.to_json()), unit_pages
            )
            for unit, unit_pages in groups.items()
        ]
        return all(await scripts.run(self._redis, call_list, self._timeout_s))

    async def load(
        self,
        site: str,
        site_total: int,
        config: SiteConfig,
        page_totals: AsyncIterator[Sequence[tuple[str, int]]],
        day_rows: Callable[[bool], AsyncIterator[Sequence[tuple[str, str, int]]]] | None = None,
    ) -> None:
        """Copy a site's totals (from Postgres: its total, its pages in chunks, its recent
        daily views from `day_rows(by_page)`) into those of its units that are not loaded; a
        unit another loader finished meanwhile is left alone.

        A unit's part of the site total is the sum of its pages' totals; unit 0 also holds
        the rest (site total minus all pages, e.g. a site baseline), so the parts sum to the
        site total however many units are loaded at a time. Its days hash holds its part of
        `day_rows` (stats.add_day_parts).
        """
        unit_ids = self._units.of(site)
        loading = set(unit_ids)
        parts = dict.fromkeys(unit_ids, 0)
        async for chunk in page_totals:
            found: dict[str, tuple[list[str], list[int]]] = {}
            for page, total in chunk:
                unit = self._units.holding(site, page)
                parts[unit] += total
                if unit in loading:
                    unit_pages, totals = found.setdefault(unit, ([], []))
                    unit_pages.append(page)
                    totals.append(total)
            call_list = [
                calls.pages_call(scripts.LOAD_PAGES, u, (), unit_pages, totals)
                for u, (unit_pages, totals) in found.items()
            ]
            for unit, written in zip(found, await scripts.run(self._redis, call_list), strict=True):
                if not written:
                    loading.discard(unit)  # loaded meanwhile by another process
            if not loading:
                return
        parts[site] = site_total - sum(parts[u] for u in unit_ids[1:])
        days: dict[str, dict[str, int]] = {unit: {} for unit in unit_ids}
        if day_rows is not None:
            # By page on a split site: each unit holds its own pages' part.
            async for rows in day_rows(self._count > 1):
                add_day_parts(days, self._units, site, rows)
        await scripts.run(
            self._redis,
            [
                (
                    scripts.LOAD_SITE,
                    2,
                    [
                        keys.site_key(unit),
                        keys.days_key(unit),
                        secrets.token_hex(8),
                        parts[unit],
                        config.timezone,
                        config.to_json(),
                        keys.DAYS_FILLED,
                        *(value for pair in sorted(days[unit].items()) for value in pair),
                    ],
                )
                for unit in unit_ids
                if unit in loading
            ],
        )
        self._units.forget(site)

    async def daily_salt(self, day: str) -> bytes:
        """The shared random salt of `day` for visitor hashes (created by the first asker)."""
        key = keys.salt_key(day)
        _, salt = await self._pipeline(
            lambda pipe: pipe.set(key, secrets.token_hex(32), nx=True, ex=SALT_TTL_S).get(key)
        )
        return bytes.fromhex(salt)

    async def count_admin_request(self, token: str, minute: int) -> int:
        """Count one admin request of a client in a clock minute; the count so far."""
        key = keys.admin_rate_key(token, minute)
        # The expiry exists before any count.
        _, count = await self._pipeline(
            lambda pipe: pipe.set(key, 0, nx=True, ex=ADMIN_RATE_TTL_S).incr(key)
        )
        return int(count)

    async def claim_idempotency(
        self, site: str, token: str, body_hash: str, keep_s: int
    ) -> str | None:
        """SET-if-absent the body hash of an idempotent batch (kept `keep_s`); the earlier
        hash, or None."""
        key = keys.idempotency_key(site, f"{token}:body")
        created, stored = await self._pipeline(
            lambda pipe: pipe.set(key, body_hash, nx=True, ex=keep_s).get(key)
        )
        return None if created else cast(str, stored)

    async def _pipeline(self, commands: Callable[[Any], object]) -> list[Any]:
        """The answers of the `commands` put on one pipeline (no transaction), within the
        timeout (client.bounded); CounterUnavailable when it failed."""

        async def send() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                commands(pipe)
                return await pipe.execute()

        with client.translated():
            return await client.bounded(self._timeout_s, send())
