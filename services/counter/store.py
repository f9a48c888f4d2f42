"""Typed async access to the counting state in Redis: hits, reads, loads and snapshots.

This is the only module that runs Redis commands for counting. Hits that arrive in the same
event-loop turn are sent together in one pipeline: still one round trip per hit (fewer, in
fact), and the loop does not pay redis-py's per-command overhead once per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE

from services.counter import keys, scripts
from services.counter.siteconfig import SiteConfig

log = logging.getLogger("viewcounter.store")

SNAPSHOT_SCAN_COUNT = 5000
SALT_TTL_S = 2 * 86400
# Hits leave in calls of at most HITS_PER_BATCH, up to PIPELINES_IN_FLIGHT calls at once. With
# no cap, the hits answered together come back together and leave together again: the api and
# Redis then take turns (the api idled ~22% under load); smaller calls, more of them in
# flight, keep both busy (BENCHMARKS.md: +13% hits/s at 64 connections).
PIPELINES_IN_FLIGHT = 4
HITS_PER_BATCH = 32
# Counts reads leave together the same way, at most this many a batch (the api lets a read
# name up to 100 pages: a counts.lua call then reads at most 1,600 pages).
COUNTS_PER_BATCH = 16
# Bounds how long one script call keeps Redis busy (about a microsecond per hit).
MAX_HITS_PER_CALL = 256
VISITOR_READ_CHUNK = 1000
MIGRATE_CHUNK = 500
# A site split over several units: how long the sum of its units' totals (and the union of
# their visitor sketches) is reused before it is read again.
SITE_TOTAL_CACHE_S = 1.0
SITE_CACHE_MAX = 10_000
GENERATION_SEP = "|"
# Script calls one batch sends to a Cluster at once; keep VIEWCOUNTER_REDIS_MAX_CONNECTIONS
# (per node there) above PIPELINES_IN_FLIGHT times this.
CLUSTER_CALLS_AT_ONCE = 4
_REDIS_OPTIONS = frozenset(inspect.signature(Redis.__init__).parameters)
Q = TypeVar("Q")
A = TypeVar("A")


class CounterUnavailable(Exception):
    """Redis is unreachable, loading, full or did not answer in time."""


class UnsafeRedis(Exception):
    """Redis is configured to evict keys, which would silently drop unflushed counts."""


class LayoutMismatch(UnsafeRedis):
    """Redis holds counts split over another number of units than VIEWCOUNTER_SHARDS says."""


@dataclass(frozen=True, slots=True)
class HitRequest:
    """One page view to take: the page, its local day, and who it came from (as tokens)."""

    site: str
    page: str
    day: str
    seen_token: str
    dedupe_window_s: int
    client_token: str
    minute: int
    rate_limit: int
    page_rule: int  # 0 any page, n > 0 at most n pages, ONLY_KNOWN_PAGES only pages it has
    visitor_token: str


ONLY_KNOWN_PAGES = -1
OUTCOMES = {1: "counted", 2: "duplicate", 3: "rate_limited", 4: "page_limit", 5: "unknown_page"}


@dataclass(frozen=True, slots=True)
class HitResult:
    """What happened to a hit (one of OUTCOMES' values), and the live totals."""

    outcome: str
    page_views: int
    site_views: int


@dataclass(frozen=True, slots=True)
class Counts:
    """Live totals of a site and some of its pages."""

    site_views: int
    pages: dict[str, int]
    site_visitors: int = 0  # distinct visitors of the site on the day asked
    page_visitors: dict[str, int] | None = None  # distinct visitors of each page that day


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """Redis' memory use against its bound (`max_bytes` 0: no bound set)."""

    used_bytes: int
    max_bytes: int

    @property
    def ratio(self) -> float | None:
        """Used / bound, or None when Redis has no bound."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Pending shards of one unit frozen under a batch id, and the generation they belong to."""

    unit: str
    generation: str | None
    keys: list[str]


@dataclass(slots=True)
class _SiteTotal:
    """What this process last read of a site's units (a site split over several)."""

    until: float  # time.monotonic() after which the units are read again
    views: dict[str, int]  # unit -> its part of the site total, as last read or answered
    unloaded: bool  # a unit was not loaded at the last read (Redis lost it)
    unreachable: bool  # a unit's node did not answer the last read
    # Parts answered by scripts since the next read began: newer than what it may bring.
    answered: dict[str, int] = dataclasses.field(default_factory=dict)


Client = Redis | RedisCluster
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


class HiredisPackConnection(Connection):
    """A connection that serialises commands with hiredis (C) instead of redis-py's Python.

    redis-py's asyncio connection packs every argument in Python (~1-2 us each); a hits.lua
    call carries 11 per hit, which made packing ~10% of the api's CPU under load. The bytes
    sent are the same; anything hiredis refuses (a bool, say) goes to redis-py's packer,
    which raises as before. (hiredis comes with redis[hiredis], a dependency.)
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in the Redis protocol, as one buffer."""
        # redis-py sends multi-word commands ("SCRIPT LOAD") as one first argument.
        first = args[0].encode() if isinstance(args[0], str) else args[0]
        if isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)


def connect(url: str, *, max_connections: int, timeout_s: float) -> Client:
    """A client whose pool waits (bounded) for a free connection and never retries by itself.

    A retried script after a timeout may run twice (the first may have run): so no retries,
    and a failure is answered as 503 instead. A redis+cluster:// (rediss+cluster://) URL gives
    a Redis Cluster client (`max_connections` per node; it follows MOVED/ASK redirections,
    which are safe: a redirected command did not run).
    """
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    if url.startswith(CLUSTER_SCHEMES):
        return RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    # A unix:// or rediss:// URL keeps the connection class it names (its own packer).
    pool = BlockingConnectionPool.from_url(
        url, timeout=timeout_s, connection_class=HiredisPackConnection, **options
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its sockets


# What a failing Redis (or its connection) raises. AttributeError too: redis-py's Cluster
# client can raise it when a node's connection is closed under it (a node restarted), and that
# must answer 503 like any lost connection, not 500.
CLIENT_ERRORS = (redis_errors.RedisError, OSError, TimeoutError, AttributeError)


def _unavailable(exc: BaseException) -> CounterUnavailable:
    if isinstance(exc, redis_errors.BusyLoadingError):
        return CounterUnavailable("Redis is loading its data")
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return CounterUnavailable("Redis is full (maxmemory reached)")
    if isinstance(exc, redis_errors.TimeoutError | asyncio.TimeoutError):
        return CounterUnavailable("Redis did not answer in time")
    if isinstance(exc, AttributeError):
        return CounterUnavailable(f"Redis connection lost: {exc}")
    return CounterUnavailable(f"Redis error: {exc}")


Call = tuple[scripts.Script, int, Sequence[Any]]


async def _one_script(redis: Client, call: Call) -> Any:
    script, numkeys, argv = call
    try:
        return await redis.evalsha(script.sha, numkeys, *argv)
    except redis_errors.ResponseError as exc:
        return exc


async def _send_scripts(
    redis: Client, batch: Sequence[Call], waitaof_timeout_ms: int | None
) -> tuple[list[Any], bool | None]:
    if len(batch) == 1 and waitaof_timeout_ms is None:
        # One call (the usual hit batch: one site): a pipeline's bookkeeping costs more than
        # the call itself.
        return [await _one_script(redis, batch[0])], None
    if isinstance(redis, RedisCluster):
        # redis-py's Cluster pipelines refuse EVALSHA: the calls (one per site, each on its
        # slot's node) go out concurrently instead. WAITAOF needs one connection: CounterStore
        # sends it through a node's own client.
        if waitaof_timeout_ms is not None:
            raise ValueError("WAITAOF cannot follow a Cluster client's calls")
        # A few at a time: a Cluster node's pool refuses (rather than waits) past its size.
        # A node that is down fails only the calls of its own sites: each call's error comes
        # back as its value, so hits that other nodes applied are answered as counted.
        answers: list[Any] = []
        for start in range(0, len(batch), CLUSTER_CALLS_AT_ONCE):
            chunk = batch[start : start + CLUSTER_CALLS_AT_ONCE]
            answers += await asyncio.gather(
                *(_one_script(redis, call) for call in chunk), return_exceptions=True
            )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, CLIENT_ERRORS):
                raise answer  # cancellation, or a bug: not a Redis failure
        return answers, None
    async with redis.pipeline(transaction=False) as pipe:
        for script, numkeys, argv in batch:
            pipe.evalsha(script.sha, numkeys, *argv)
        if waitaof_timeout_ms is not None:
            pipe.execute_command("WAITAOF", 1, 0, waitaof_timeout_ms)
        out: list[Any] = await pipe.execute(raise_on_error=False)
    if waitaof_timeout_ms is None:
        return out, None
    fsync = out.pop()
    if isinstance(fsync, Exception):
        return out, None
    return out, int(fsync[0]) >= 1


async def run_scripts(
    redis: Client, calls: Sequence[Call], waitaof_timeout_ms: int | None = None
) -> tuple[list[Any], bool | None]:
    """Run script calls in one pipeline (on a Cluster: concurrently, each on its node);
    per-call errors come back as exception values.

    With `waitaof_timeout_ms`, WAITAOF follows on the same connection, and the second value
    says whether the writes were fsynced to Redis' AOF in time: True, False (timed out), or
    None when the server cannot say (AOF off, or a Redis older than 7.2).
    """
    results, fsynced = await _send_scripts(redis, calls, waitaof_timeout_ms)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis_errors.NoScriptError)]
    if missing:
        # NOSCRIPT means the call did not run (SCRIPT FLUSH, failover): safe to send again.
        for script in {calls[i][0] for i in missing}:
            await redis.script_load(script.source)
        again, fsynced = await _send_scripts(redis, [calls[i] for i in missing], waitaof_timeout_ms)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results, fsynced


def unit_of(site: str, page: str, units: int) -> str:
    """The unit of `site` (split over `units`) that counts `page`."""
    return site if units == 1 else keys.unit(site, keys.unit_index(page, units))


def hits_call(
    unit: str,
    requests: Sequence[HitRequest],
    units: int = 1,
    idempotency_token: str = "-",
    keep_s: int = 0,
) -> Call:
    """One hits.lua call taking `requests` (all of one `unit` of a site split over `units`);
    with `keep_s`, idempotent under `idempotency_token` for that long.

    Split over several units, a site's page bound applies per unit as its share (rounded
    up), and a client's rate limit per unit: a unit cannot see the others' counts.
    """
    key_list = [keys.site_key(unit)]
    key_list.extend(keys.pending_key(unit, shard) for shard in range(keys.PENDING_SHARDS))
    key_list.append(keys.idempotency_key(unit, idempotency_token))
    args: list[str | int | bytes] = [keep_s]
    for r in requests:
        bucket, field = keys.page_entry(unit, r.page)
        key_list.extend(
            (
                keys.seen_key(unit, r.seen_token),
                keys.rate_key(unit, r.client_token, r.minute),
                keys.site_visitors_key(unit, r.day),
                keys.page_visitors_key(unit, r.day, r.page),
                bucket,
            )
        )
        page_rule = r.page_rule
        if units > 1 and page_rule > 0:
            page_rule = math.ceil(page_rule / units)
        args.extend(
            (
                keys.shard_of(r.page),
                r.page,
                r.day,
                r.dedupe_window_s,
                r.rate_limit,
                page_rule,
                r.visitor_token,
                field,
            )
        )
    return (scripts.HITS, len(key_list), [*key_list, *args])


def _pages_call(
    script: scripts.Script,
    unit: str,
    head: Sequence[str | int],
    pages: Sequence[str],
    values: Sequence[int] | None = None,
) -> Call:
    """A call of a script taking the unit hash and a bucket per page as KEYS, and `head`,
    then each page's field (followed by its value, with `values`) as ARGV."""
    key_list = [keys.site_key(unit)]
    argv: list[str | int | bytes] = [*head]
    for i, page in enumerate(pages):
        bucket, field = keys.page_entry(unit, page)
        key_list.append(bucket)
        argv.append(field)
        if values is not None:
            argv.append(values[i])
    return (script, len(key_list), [*key_list, *argv])


def _counts_call(unit: str, day: str, pages: Sequence[str]) -> tuple[list[str], list[bytes]]:
    key_list = [keys.site_key(unit), keys.site_visitors_key(unit, day)]
    fields: list[bytes] = []
    for page in pages:
        bucket, field = keys.page_entry(unit, page)
        key_list.extend((bucket, keys.page_visitors_key(unit, day, page)))
        fields.append(field)
    return key_list, fields


@dataclass(slots=True)
class _Queued(Generic[Q, A]):
    request: Q
    future: asyncio.Future[A]


class _GroupCommit(Generic[Q, A]):
    """Sends the requests taken within one event-loop turn together, as few script calls as
    they allow.

    Like a group commit: while PIPELINES_IN_FLIGHT batches are out, requests queue up and
    leave together (`per_batch` at most) when one returns, so under load a call carries many
    of them and the fixed cost of a round trip (and of redis-py's per-command work) is
    shared; when idle, a request leaves at once.
    """

    def __init__(self, redis: Client, per_batch: int) -> None:
        self._redis = redis
        self._per_batch = per_batch
        self._queue: list[_Queued[Q, A]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Q) -> A:
        """Queue one request and wait for its answer."""
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(request, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._queue and not self._scheduled and len(self._tasks) < PIPELINES_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue[: self._per_batch], self._queue[self._per_batch :]
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)
        self._schedule()  # the rest, if a call may still leave

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._schedule()

    async def _send(self, batch: list[_Queued[Q, A]]) -> None:
        try:
            await self._send_batch(batch)
        except Exception as exc:
            # A bug must fail its requests, never leave them waiting forever.
            _fail(batch, exc)
            raise

    async def _send_batch(self, batch: list[_Queued[Q, A]]) -> None:
        raise NotImplementedError

    async def _run_calls(
        self, chunks: Sequence[list[_Queued[Q, A]]], calls: Sequence[Call]
    ) -> list[Any]:
        """Run one call per chunk; a chunk whose call failed is failed (its result None)."""
        try:
            results, _ = await run_scripts(self._redis, calls)
        except CLIENT_ERRORS as exc:
            for chunk in chunks:
                _fail(chunk, _unavailable(exc))
            return [None] * len(chunks)
        for i, (chunk, result) in enumerate(zip(chunks, results, strict=True)):
            if isinstance(result, Exception):
                _fail(chunk, _unavailable(result))
                results[i] = None
        return results

    async def drain(self) -> None:
        """Wait for the calls in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _HitBatcher(_GroupCommit[HitRequest, HitResult | None]):
    """Hits, HITS_PER_BATCH at most a batch, one hits.lua call per unit of a site in it.
    A hit is answered None when its unit is not loaded (nothing was written)."""

    def __init__(self, redis: Client, units: int) -> None:
        super().__init__(redis, HITS_PER_BATCH)
        self._units = units

    async def _send_batch(self, batch: list[_Queued[HitRequest, HitResult | None]]) -> None:
        groups: dict[str, list[_Queued[HitRequest, HitResult | None]]] = {}
        for item in batch:
            unit = unit_of(item.request.site, item.request.page, self._units)
            groups.setdefault(unit, []).append(item)
        chunks = [
            (unit, items[i : i + MAX_HITS_PER_CALL])
            for unit, items in groups.items()
            for i in range(0, len(items), MAX_HITS_PER_CALL)
        ]
        calls = [
            hits_call(unit, [item.request for item in chunk], self._units) for unit, chunk in chunks
        ]
        results = await self._run_calls([chunk for _, chunk in chunks], calls)
        for (_, chunk), result in zip(chunks, results, strict=True):
            if result is None:
                continue
            for i, item in enumerate(chunk):
                if item.future.done():  # the request went away; its hit still counted
                    continue
                if result[0] == 0:
                    item.future.set_result(None)
                else:
                    outcome, page_views, site_views = result[1 + 3 * i : 4 + 3 * i]
                    item.future.set_result(HitResult(OUTCOMES[outcome], page_views, site_views))


@dataclass(frozen=True, slots=True)
class _CountsRequest:
    unit: str
    day: str
    pages: Sequence[str]


# The answer of a counts read of one unit: None when the unit is not loaded, else its part
# of the site total, its visitors sketch's count, and each page's (views, visitors).
_UnitCounts = tuple[int, int, dict[str, tuple[int, int]]] | None


class _CountsBatcher(_GroupCommit[_CountsRequest, _UnitCounts]):
    """Reads of live totals, COUNTS_PER_BATCH at most a batch: the reads of one unit and day
    in a batch share one counts.lua call (their pages together, each page once)."""

    def __init__(self, redis: Client) -> None:
        super().__init__(redis, COUNTS_PER_BATCH)

    async def _send_batch(self, batch: list[_Queued[_CountsRequest, _UnitCounts]]) -> None:
        groups: dict[tuple[str, str], list[_Queued[_CountsRequest, _UnitCounts]]] = {}
        for item in batch:
            groups.setdefault((item.request.unit, item.request.day), []).append(item)
        chunks: list[list[_Queued[_CountsRequest, _UnitCounts]]] = []
        calls: list[Call] = []
        pages_of_call: list[list[str]] = []
        for (unit, day), items in groups.items():
            pages = list(dict.fromkeys(p for item in items for p in item.request.pages))
            key_list, argv = _counts_call(unit, day, pages)
            chunks.append(items)
            calls.append((scripts.COUNTS, len(key_list), [*key_list, *argv]))
            pages_of_call.append(pages)
        results = await self._run_calls(chunks, calls)
        for items, pages, result in zip(chunks, pages_of_call, results, strict=True):
            if result is None:
                continue
            answer: _UnitCounts = None
            if result[0] != 0:
                per_page = {
                    page: (int(views), int(visitors))
                    for page, views, visitors in zip(pages, result[3::2], result[4::2], strict=True)
                }
                answer = (int(result[1]), int(result[2]), per_page)
            for item in items:
                if not item.future.done():
                    item.future.set_result(answer)


def _fail(items: Sequence[_Queued[Any, Any]], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


class CounterStore:
    """Counting state in Redis, exposed as typed methods; wraps Redis errors as ours.

    Each site is split by page over `units` units (keys.py); methods that take a site fan
    out to its units, the flusher's methods (snapshots, leases, generation) take units.
    """

    def __init__(self, redis: Client, *, units: int = 1) -> None:
        if not 1 <= units <= keys.MAX_UNITS:
            raise ValueError(f"units must be 1..{keys.MAX_UNITS}")
        self.redis = redis
        self.units = units
        self._hits = _HitBatcher(redis, units)
        self._counts = _CountsBatcher(redis)
        self._node_clients: dict[str, Redis] = {}
        self._totals: dict[str, _SiteTotal] = {}
        self._reading: dict[str, asyncio.Task[_SiteTotal]] = {}
        self._visitors: dict[tuple[str, str], tuple[float, int]] = {}

    async def register_scripts(self) -> None:
        """Load every script so the first calls need no NOSCRIPT recovery."""
        try:
            for script in scripts.ALL:
                await self.redis.script_load(script.source)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        """Finish pipelines and reads in flight, then close the client."""
        await self._hits.drain()
        await self._counts.drain()
        await asyncio.gather(*self._reading.values(), return_exceptions=True)
        for client in self._node_clients.values():
            await client.aclose()
        await self.redis.aclose()

    def _node_client(self, key: str) -> Redis:
        """A plain client of the Cluster node holding `key`: commands that must share one
        connection (a write, then WAITAOF for it) go through it."""
        assert isinstance(self.redis, RedisCluster)
        node = self.redis.get_node_from_key(key)
        if node is None:
            raise CounterUnavailable(f"no Redis Cluster node holds {key}'s slot")
        client = self._node_clients.get(node.name)
        if client is None:
            # The node's own connection options (auth, TLS, timeouts), as a plain client takes them.
            options = {
                k: v
                for k, v in node.connection_kwargs.items()
                if k in _REDIS_OPTIONS and k not in ("host", "port")
            }
            client = Redis(host=node.host, port=int(node.port), **options)
            self._node_clients[node.name] = client
        return client

    async def _eval(
        self, script: scripts.Script, key_list: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            results, _ = await run_scripts(
                self.redis, [(script, len(key_list), [*key_list, *args])]
            )
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        if isinstance(results[0], Exception):
            raise _unavailable(results[0])
        return results[0]

    async def hit(self, request: HitRequest) -> HitResult | None:
        """Take one page view; None when the site (the page's unit of it) is not loaded:
        nothing was written then."""
        result = await self._hits.submit(request)
        if result is None or self.units == 1:
            return result
        unit = unit_of(request.site, request.page, self.units)
        site_views, _ = await self._site_views(request.site, {unit: result.site_views}, wait=False)
        return HitResult(result.outcome, result.page_views, site_views)

    def units_of(self, site: str) -> list[str]:
        """Every unit of `site`, unit 0 (the site id itself) first."""
        return keys.units(site, self.units)

    async def check_layout(self) -> None:
        """Raise LayoutMismatch when this Redis holds counts split over another number of
        units; record ours when it holds none (after moving page totals written by releases
        before page buckets into the buckets)."""
        try:
            if not await self.redis.exists(keys.LAYOUT_KEY):
                await self._migrate_page_hashes()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.LAYOUT_KEY, self.units, nx=True)
                pipe.get(keys.LAYOUT_KEY)
                _, recorded = await pipe.execute()
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        if int(recorded) != self.units:
            raise LayoutMismatch(
                f"Redis holds sites split over {recorded} units, VIEWCOUNTER_SHARDS says "
                f"{self.units}: set it back, or drain Redis first (README, Scaling)"
            )

    async def _migrate_page_hashes(self) -> None:
        async for old in self.redis.scan_iter(match=keys.LEGACY_PAGES_PATTERN, count=1000):
            unit = keys.parse_legacy_pages_key(old)
            if unit is None:
                continue
            while True:
                # The script removes what it moves: a scan from the start finds the rest.
                _, chunk = await self.redis.hscan(old, 0, count=MIGRATE_CHUNK)
                if not chunk:
                    break
                pages = cast(dict[str, str], chunk)  # decode_responses: page ids as str
                entries = [(page, *keys.page_entry(unit, page)) for page in pages]
                key_list = [old, keys.site_key(unit), *(bucket for _, bucket, _ in entries)]
                pairs = [x for page, _, field in entries for x in (page, field)]
                await self._eval(scripts.MIGRATE_PAGES, key_list, pairs)
            log.info("page totals of %s moved into page buckets", unit)

    async def _site_views(
        self, site: str, fresh: Mapping[str, int], *, wait: bool = True
    ) -> tuple[int, _SiteTotal]:
        """The site's live total: the sum of its units' parts (read at most every
        SITE_TOTAL_CACHE_S, `fresh` ones just answered by a script), and that read (whether
        a unit was unloaded or unreachable). Between reads a part only grows, so answers that arrive
        out of order do not make the total shown go back."""
        cached = await self._site_total(site, wait=wait)
        for unit, views in fresh.items():
            cached.views[unit] = max(cached.views.get(unit, views), views)
            cached.answered[unit] = max(cached.answered.get(unit, views), views)
        return sum(cached.views.values()), cached

    async def _site_total(self, site: str, *, wait: bool = True) -> _SiteTotal:
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

    def _read_done(self, site: str) -> Callable[[asyncio.Task[_SiteTotal]], None]:
        def done(task: asyncio.Task[_SiteTotal]) -> None:
            self._reading.pop(site, None)
            if not task.cancelled() and task.exception() is not None:
                log.error("reading the units of %s failed", site, exc_info=task.exception())

        return done

    async def _read_units(self, site: str, before: _SiteTotal | None) -> _SiteTotal:
        if before is not None:
            before.answered.clear()  # from now on: what this read may not include
        unit_ids = self.units_of(site)
        answers = await self._read_parts(unit_ids)
        views: dict[str, int] = {}
        unloaded = unreachable = False
        for unit, answer in zip(unit_ids, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, CLIENT_ERRORS):
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
        total = _SiteTotal(time.monotonic() + SITE_TOTAL_CACHE_S, views, unloaded, unreachable)
        if len(self._totals) >= SITE_CACHE_MAX:
            self._totals.clear()
        self._totals[site] = total
        return total

    async def _read_parts(self, unit_ids: Sequence[str]) -> list[Any]:
        """Each unit's [generation, part of the site total], or the error reading it."""
        fields = [keys.SITE_GEN, keys.SITE_VIEWS]
        answers: list[Any]
        if isinstance(self.redis, RedisCluster):
            # Each unit on its own: a node that is down costs only its units' parts.
            answers = []
            for start in range(0, len(unit_ids), CLUSTER_CALLS_AT_ONCE):
                chunk = unit_ids[start : start + CLUSTER_CALLS_AT_ONCE]
                answers += await asyncio.gather(
                    *(self.redis.hmget(keys.site_key(u), fields) for u in chunk),
                    return_exceptions=True,
                )
        else:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for unit in unit_ids:
                        pipe.hmget(keys.site_key(unit), fields)
                    answers = await pipe.execute()
            except CLIENT_ERRORS as exc:
                answers = [exc] * len(unit_ids)
        return answers

    async def _site_visitors(self, site: str, day: str, *, cached: bool = True) -> int:
        """Distinct visitors of a site split over several units on `day`: the union of the
        units' sketches, counted in unit 0's slot."""
        hit = self._visitors.get((site, day))
        if cached and hit is not None and hit[0] > time.monotonic():
            return hit[1]
        unit_ids = self.units_of(site)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for unit in unit_ids:
                    # A sketch is binary: read it as bytes, send it back as bytes.
                    pipe.execute_command(
                        "GET", keys.site_visitors_key(unit, day), **{NEVER_DECODE: True}
                    )
                sketches = [raw for raw in await pipe.execute() if raw]
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        count = int(
            await self._eval(scripts.MERGE_VISITORS, keys.visitors_merge_keys(site), sketches)
        )
        if len(self._visitors) >= SITE_CACHE_MAX:
            self._visitors.clear()
        self._visitors[(site, day)] = (time.monotonic() + SITE_TOTAL_CACHE_S, count)
        return count

    async def count_admin_request(self, token: str, minute: int) -> int:
        """Count one admin request of a client in a clock minute; the count so far."""
        key = keys.admin_rate_key(token, minute)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, 0, nx=True, ex=120)  # the expiry exists before any count
                pipe.incr(key)
                _, count = await pipe.execute()
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        return int(count)

    async def claim_idempotency(
        self, site: str, token: str, body_hash: str, keep_s: int
    ) -> str | None:
        """SET-if-absent the body hash of an idempotent batch; the earlier hash, or None."""
        key = keys.idempotency_key(site, f"{token}:body")
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, body_hash, nx=True, ex=keep_s)
                pipe.get(key)
                created, stored = await pipe.execute()
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        return None if created else cast(str, stored)

    async def hit_batch(
        self, requests: Sequence[HitRequest], idempotency_token: str, keep_s: int
    ) -> list[HitResult] | None:
        """Take many page views of one site, MAX_HITS_PER_CALL per script call (per unit),
        each call idempotent under `idempotency_token` and its position: sent again (a retry
        after a failure part-way), the calls that ran answer what they did and count nothing.
        None when the site (a unit of it) is not loaded. The site views answered are those
        of the page's unit."""
        groups: dict[str, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(unit_of(request.site, request.page, self.units), []).append(position)
        calls: list[Call] = []
        positions: list[list[int]] = []
        for index, (unit, members) in enumerate(groups.items()):
            # The same body always gives the same calls, so a retry finds their records.
            prefix = idempotency_token if self.units == 1 else f"{idempotency_token}:u{index}"
            for n, i in enumerate(range(0, len(members), MAX_HITS_PER_CALL)):
                chunk = members[i : i + MAX_HITS_PER_CALL]
                calls.append(
                    hits_call(
                        unit, [requests[p] for p in chunk], self.units, f"{prefix}:{n}", keep_s
                    )
                )
                positions.append(chunk)
        answers: dict[int, HitResult] = {}
        for chunk, result in zip(positions, await self._run(calls), strict=True):
            if result[0] == 0:
                return None  # the calls that ran answer the same when sent again
            for j, position in enumerate(chunk):
                outcome, page_views, unit_views = result[1 + 3 * j : 4 + 3 * j]
                answers[position] = HitResult(
                    OUTCOMES[int(outcome)], int(page_views), int(unit_views)
                )
        return [answers[position] for position in range(len(requests))]

    async def daily_salt(self, day: str) -> bytes:
        """The shared random salt of `day` for visitor hashes (created by the first asker)."""
        key = keys.salt_key(day)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, secrets.token_hex(32), nx=True, ex=SALT_TTL_S)
                pipe.get(key)
                _, salt = await pipe.execute()
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        return bytes.fromhex(salt)

    async def counts(self, site: str, day: str, pages: Sequence[str]) -> Counts | None:
        """Live totals of `site` and `pages`, and their distinct visitors on local `day`;
        None when the site (a unit of it) is not loaded. Reads taken together leave
        together (group commit, as hits do)."""
        groups: dict[str, list[str]] = {site: []} if self.units == 1 else {}
        for page in dict.fromkeys(pages):
            groups.setdefault(unit_of(site, page, self.units), []).append(page)
        answers = await asyncio.gather(
            *(self._counts.submit(_CountsRequest(u, day, p)) for u, p in groups.items()),
            return_exceptions=True,
        )
        per_page: dict[str, tuple[int, int]] = {}
        fresh: dict[str, int] = {}
        site_views = site_visitors = 0
        for unit, answer in zip(groups, answers, strict=True):
            if isinstance(answer, BaseException):
                raise answer  # every read was answered (no error left unread)
            if answer is None:
                return None
            fresh[unit] = answer[0]
            per_page.update(answer[2])
            if self.units == 1:
                site_views, site_visitors = answer[0], answer[1]
        if self.units > 1:
            site_views, state = await self._site_views(site, fresh)
            if state.unreachable:
                raise CounterUnavailable("a Redis node holding part of the site does not answer")
            if state.unloaded:
                return None
            site_visitors = await self._site_visitors(site, day)
        return Counts(
            site_views=site_views,
            pages={page: per_page[page][0] for page in pages},
            site_visitors=site_visitors,
            page_visitors={page: per_page[page][1] for page in pages},
        )

    async def site_config(self, site: str) -> SiteConfig | None:
        """The settings the site was loaded with, or None when it is not loaded."""
        try:
            gen, tz, cfg = await self.redis.hmget(
                keys.site_key(site), [keys.SITE_GEN, keys.SITE_TZ, keys.SITE_CONFIG]
            )
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        if gen is None or tz is None:
            return None
        return SiteConfig.from_json(cast(str | None, cfg), cast(str, tz))

    async def set_config(
        self, site: str, config: SiteConfig, new_pages: Sequence[str] = ()
    ) -> bool:
        """Record changed settings (and newly registered pages) of a loaded site, in each of its
        units; False when a unit is not loaded (nothing written there): its next load brings
        them from Postgres."""
        groups: dict[str, list[str]] = {unit: [] for unit in self.units_of(site)}
        for page in new_pages:
            groups[unit_of(site, page, self.units)].append(page)
        calls = [
            _pages_call(scripts.SET_CONFIG, unit, (config.timezone, config.to_json()), unit_pages)
            for unit, unit_pages in groups.items()
        ]
        return all(await self._run(calls))

    async def visitor_estimates(
        self, site_days: Sequence[tuple[str, str]], page_days: Sequence[tuple[str, str, str]]
    ) -> tuple[list[int], list[int]]:
        """Distinct-visitor estimates of (site, day) and (site, page, day) buckets, in order."""
        # One script call per unit and chunk: a unit's sketches share its Cluster slot.
        wanted: list[tuple[str, str]] = []
        if self.units == 1:
            wanted += [(site, keys.site_visitors_key(site, day)) for site, day in site_days]
        for site, page, day in page_days:
            unit = unit_of(site, page, self.units)
            wanted.append((unit, keys.page_visitors_key(unit, day, page)))
        by_unit: dict[str, list[int]] = {}
        for i, (unit, _) in enumerate(wanted):
            by_unit.setdefault(unit, []).append(i)
        calls: list[Call] = []
        slots: list[list[int]] = []
        for indexes in by_unit.values():
            for start in range(0, len(indexes), VISITOR_READ_CHUNK):
                chunk = indexes[start : start + VISITOR_READ_CHUNK]
                calls.append((scripts.VISITORS, len(chunk), [wanted[i][1] for i in chunk]))
                slots.append(chunk)
        values = [0] * len(wanted)
        for chunk, result in zip(slots, await self._run(calls), strict=True):
            for i, value in zip(chunk, result, strict=True):
                values[i] = int(value)
        if self.units == 1:
            return values[: len(site_days)], values[len(site_days) :]
        # Split over units: a site's visitors are the union of its units' sketches.
        site_values = [
            await self._site_visitors(site, day, cached=False) for site, day in site_days
        ]
        return site_values, values

    async def memory(self) -> RedisMemory:
        """Redis' used memory and its maxmemory bound (of a Cluster: the fullest primary)."""
        try:
            if isinstance(self.redis, RedisCluster):
                per_node = await self.redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
                infos = list(per_node.values())
            else:
                infos = [await self.redis.info("memory")]
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        readings = [
            RedisMemory(int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))
            for info in infos
        ]
        return max(readings, key=lambda m: (m.ratio or 0.0, m.used_bytes))

    async def load(
        self,
        site: str,
        site_total: int,
        config: SiteConfig,
        page_totals: AsyncIterator[Sequence[tuple[str, int]]],
    ) -> None:
        """Copy a site's totals (from Postgres: its total, then its pages in chunks) into
        those of its units that are not loaded; a unit another loader finished meanwhile is
        left alone.

        A unit's part of the site total is the sum of its pages' totals; unit 0 also holds
        the rest (site total minus all pages, e.g. a site baseline), so the parts sum to the
        site total however many units are loaded at a time.
        """
        unit_ids = self.units_of(site)
        loading = set(unit_ids)
        parts = dict.fromkeys(unit_ids, 0)
        async for chunk in page_totals:
            found: dict[str, tuple[list[str], list[int]]] = {}
            for page, total in chunk:
                unit = unit_of(site, page, self.units)
                parts[unit] += total
                if unit in loading:
                    unit_pages, totals = found.setdefault(unit, ([], []))
                    unit_pages.append(page)
                    totals.append(total)
            calls = [
                _pages_call(scripts.LOAD_PAGES, u, (), unit_pages, totals)
                for u, (unit_pages, totals) in found.items()
            ]
            for unit, written in zip(found, await self._run(calls), strict=True):
                if not written:
                    loading.discard(unit)  # loaded meanwhile by another process
            if not loading:
                return
        parts[site] = site_total - sum(parts[u] for u in unit_ids[1:])
        await self._run(
            [
                (
                    scripts.LOAD_SITE,
                    1,
                    [
                        keys.site_key(unit),
                        secrets.token_hex(8),
                        parts[unit],
                        config.timezone,
                        config.to_json(),
                    ],
                )
                for unit in unit_ids
                if unit in loading
            ]
        )
        self._totals.pop(site, None)

    async def generation(self, unit: str) -> str | None:
        """The unit's load generation; it changes only when Redis lost the unit and it was
        refilled."""
        try:
            gen = await self.redis.hget(keys.site_key(unit), keys.SITE_GEN)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        return cast(str | None, gen)

    async def site_generation(self, site: str) -> str | None:
        """The load generations of the site's units as one token ("|" between units, "" for
        a unit not loaded); None when no unit is loaded."""
        if self.units == 1:
            return await self.generation(site)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for unit in self.units_of(site):
                    pipe.hget(keys.site_key(unit), keys.SITE_GEN)
                gens = await pipe.execute()
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        if all(gen is None for gen in gens):
            return None
        return GENERATION_SEP.join(gen or "" for gen in gens)

    async def snapshot(
        self, batches: Mapping[str, str], fsync_timeout_ms: int | None
    ) -> tuple[list[Snapshot], bool | None]:
        """Freeze the non-empty pending shards of each unit in `batches` (unit -> batch id)
        under its batch id, in one pipeline.

        With `fsync_timeout_ms`, also wait (WAITAOF) until the moves are in Redis' AOF on disk,
        so a Redis crash cannot roll them back after a batch reached Postgres; the second
        value says whether that was confirmed (None: the server cannot confirm it).
        """
        unit_ids = list(batches)
        calls: list[Call] = []
        targets: list[list[str]] = []
        for unit, batch_id in batches.items():
            unit_targets = [
                keys.snapshot_key(unit, shard, batch_id) for shard in range(keys.PENDING_SHARDS)
            ]
            argv = [keys.site_key(unit)]
            for shard, target in enumerate(unit_targets):
                argv.extend((keys.pending_key(unit, shard), target))
            calls.append((scripts.SNAPSHOT, len(argv), argv))
            targets.append(unit_targets)
        try:
            if isinstance(self.redis, RedisCluster) and fsync_timeout_ms is not None:
                results, fsynced = await self._snapshot_per_node(unit_ids, calls, fsync_timeout_ms)
            else:
                results, fsynced = await run_scripts(self.redis, calls, fsync_timeout_ms)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        snapshots = []
        for unit, unit_targets, result in zip(unit_ids, targets, results, strict=True):
            if isinstance(result, Exception):
                raise _unavailable(result)
            moved = [unit_targets[i] for i in result[1:]]
            snapshots.append(Snapshot(unit=unit, generation=result[0], keys=moved))
        return snapshots, fsynced

    async def _snapshot_per_node(
        self, unit_ids: Sequence[str], calls: Sequence[Call], fsync_timeout_ms: int
    ) -> tuple[list[Any], bool | None]:
        # WAITAOF waits for the writes of its own connection: on a Cluster, each node's
        # snapshots and their WAITAOF go down one connection to that node.
        groups: dict[int, tuple[Redis, list[int]]] = {}
        for i, unit in enumerate(unit_ids):
            client = self._node_client(keys.site_key(unit))
            groups.setdefault(id(client), (client, []))[1].append(i)
        results: list[Any] = [None] * len(calls)
        confirmations: list[bool | None] = []
        for client, indexes in groups.values():
            node_results, fsynced = await run_scripts(
                client, [calls[i] for i in indexes], fsync_timeout_ms
            )
            for i, result in zip(indexes, node_results, strict=True):
                results[i] = result
            confirmations.append(fsynced)
        if False in confirmations:
            return results, False
        return results, None if None in confirmations else True

    async def take_leases(self, unit_ids: Sequence[str], owner: str, lease_ms: int) -> set[str]:
        """Take or renew the flush lease of each unit; the units whose lease `owner` holds."""
        calls: list[Call] = [
            (scripts.LEASE, 1, [keys.lease_key(u), owner, lease_ms]) for u in unit_ids
        ]
        results = await self._run(calls)
        return {unit for unit, result in zip(unit_ids, results, strict=True) if result[0] == 1}

    async def flushers_alive(self, owner: str, lease_ms: int) -> list[str]:
        """Record that flusher `owner` is alive; the flushers alive within the last
        `lease_ms` (this one included). `lease_ms` -1: it is leaving."""
        alive = await self._eval(scripts.FLUSHERS, (keys.FLUSHERS_KEY,), (owner, lease_ms))
        return [str(o) for o in alive]

    async def release_leases(self, unit_ids: Sequence[str], owner: str) -> None:
        """Give up the flush leases `owner` holds among `unit_ids`."""
        await self._run([(scripts.RELEASE, 1, [keys.lease_key(u), owner]) for u in unit_ids])

    async def _run(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        try:
            results, _ = await run_scripts(self.redis, calls)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        for result in results:
            if isinstance(result, Exception):
                raise _unavailable(result)
        return results

    async def read_snapshot(self, key: str) -> AsyncIterator[tuple[str, int]]:
        """(pending field, hits) pairs of a frozen snapshot, read in chunks."""
        try:
            async for field, value in self.redis.hscan_iter(key, count=SNAPSHOT_SCAN_COUNT):
                yield field, int(value)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def find_work(self) -> tuple[set[str], dict[str, list[str]]]:
        """Units with pending deltas, and snapshot keys left in Redis grouped by batch id."""
        sites: set[str] = set()
        batches: dict[str, list[str]] = {}
        try:
            async for key in self.redis.scan_iter(match=keys.WORK_KEYS_PATTERN, count=1000):
                pending_site = keys.parse_pending_key(key)
                if pending_site is not None:
                    sites.add(pending_site)
                    continue
                snapshot = keys.parse_snapshot_key(key)
                if snapshot is not None:
                    batches.setdefault(snapshot[2], []).append(key)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        return sites, batches

    async def rehome(self, key: str, new_key: str) -> bool:
        """Move a snapshot to another batch id; False when it is gone."""
        return bool(await self._eval(scripts.REHOME, (key, new_key), ()))

    async def delete(self, key_list: Sequence[str]) -> None:
        """Drop snapshots whose batch is committed in Postgres."""
        if not key_list:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in key_list:
                    pipe.delete(key)  # one key per command: keys may sit in different slots
                await pipe.execute()
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def refuse_eviction(self) -> None:
        """Raise UnsafeRedis when maxmemory-policy may evict keys without a TTL.

        Managed services that forbid CONFIG GET are given the benefit of the doubt.
        """
        try:
            if isinstance(self.redis, RedisCluster):
                per_node = await self.redis.config_get(
                    "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
                )
                confs: list[Any] = list(per_node.values())
            else:
                confs = [await self.redis.config_get("maxmemory-policy")]
        except redis_errors.ResponseError:
            return
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        for conf in confs:
            policy = conf.get("maxmemory-policy") or "noeviction"
            if policy.startswith("allkeys-"):
                raise UnsafeRedis(
                    f"Redis maxmemory-policy is {policy}: it would evict unflushed counts; "
                    "set it to noeviction"
                )

    async def ping(self) -> None:
        """Raise CounterUnavailable unless Redis answers."""
        try:
            await self.redis.ping()
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc

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
        unit_ids = self.units_of(site)
        gens = generation.split(GENERATION_SEP) if self.units > 1 else [generation]
        if len(gens) != len(unit_ids):
            return 0  # recorded under another layout: the units loaded since include it
        pages: dict[str, list[str]] = {unit: [] for unit in unit_ids}
        deltas: dict[str, list[int]] = {unit: [] for unit in unit_ids}
        parts = dict.fromkeys(unit_ids, 0)
        for page, delta in page_deltas:
            unit = unit_of(site, page, self.units)
            pages[unit].append(page)
            deltas[unit].append(delta)
            if unit != site:
                parts[unit] += delta
        parts[site] = site_delta - sum(parts.values())
        calls = [
            _pages_call(
                scripts.APPLY_BASELINE,
                unit,
                (gen, change_id, chunk, parts[unit]),
                pages[unit],
                deltas[unit],
            )
            for unit, gen in zip(unit_ids, gens, strict=True)
            if gen and (unit == site or pages[unit])
        ]
        outcomes = [int(r) for r in await self._run(calls)]
        self._totals.pop(site, None)
        return 1 if 1 in outcomes else 2 if 2 in outcomes else 0
