"""Typed async access to the counting state in Redis: hits, reads, loads and snapshots.

This is the only module that runs Redis commands for counting. Hits that arrive in the same
event-loop turn are sent together in one pipeline: still one round trip per hit (fewer, in
fact), and the loop does not pay redis-py's per-command overhead once per request.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.counter import keys, scripts
from services.counter.siteconfig import SiteConfig

SNAPSHOT_SCAN_COUNT = 5000
SALT_TTL_S = 2 * 86400
# Hits leave in calls of at most HITS_PER_BATCH, up to PIPELINES_IN_FLIGHT calls at once. With
# no cap, the hits answered together come back together and leave together again: the api and
# Redis then take turns (the api idled ~22% under load); smaller calls, more of them in
# flight, keep both busy (BENCHMARKS.md: +13% hits/s at 64 connections).
PIPELINES_IN_FLIGHT = 4
HITS_PER_BATCH = 32
# Bounds how long one script call keeps Redis busy (about a microsecond per hit).
MAX_HITS_PER_CALL = 256
VISITOR_READ_CHUNK = 1000
# Script calls one batch sends to a Cluster at once; keep VIEWCOUNTER_REDIS_MAX_CONNECTIONS
# (per node there) above PIPELINES_IN_FLIGHT times this.
CLUSTER_CALLS_AT_ONCE = 4
_REDIS_OPTIONS = frozenset(inspect.signature(Redis.__init__).parameters)


class CounterUnavailable(Exception):
    """Redis is unreachable, loading, full or did not answer in time."""


class UnsafeRedis(Exception):
    """Redis is configured to evict keys, which would silently drop unflushed counts."""


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
    """Pending shards of one site frozen under a batch id, and the generation they belong to."""

    site: str
    generation: str | None
    keys: list[str]


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


def hits_call(
    requests: Sequence[HitRequest], idempotency_token: str = "-", keep_s: int = 0
) -> Call:
    """One hits.lua call taking `requests` (all of one site); with `keep_s`, idempotent under
    `idempotency_token` for that long."""
    site = requests[0].site
    key_list = [keys.site_key(site), keys.pages_key(site)]
    key_list.extend(keys.pending_key(site, shard) for shard in range(keys.PENDING_SHARDS))
    key_list.append(keys.idempotency_key(site, idempotency_token))
    args: list[str | int] = [keep_s]
    for r in requests:
        key_list.extend(
            (
                keys.seen_key(site, r.seen_token),
                keys.rate_key(site, r.client_token, r.minute),
                keys.site_visitors_key(site, r.day),
                keys.page_visitors_key(site, r.day, r.page),
            )
        )
        args.extend(
            (
                keys.shard_of(r.page),
                r.page,
                r.day,
                r.dedupe_window_s,
                r.rate_limit,
                r.page_rule,
                r.visitor_token,
            )
        )
    return (scripts.HITS, len(key_list), [*key_list, *args])


@dataclass(slots=True)
class _QueuedHit:
    request: HitRequest
    future: asyncio.Future[HitResult | None]


class _HitBatcher:
    """Sends the hits taken within one event-loop turn as one script call per site.

    Like a group commit: while PIPELINES_IN_FLIGHT calls are out, hits queue up and leave
    together (HITS_PER_BATCH at most per call) when one returns, so under load a call carries
    many hits and the fixed cost of a round trip (and of redis-py's per-command work) is
    shared; when idle, a hit leaves at once.
    """

    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._queue: list[_QueuedHit] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def hit(self, request: HitRequest) -> HitResult | None:
        """Queue one hit and wait for its answer (None: the site is not loaded)."""
        future: asyncio.Future[HitResult | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_QueuedHit(request, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._queue and not self._scheduled and len(self._tasks) < PIPELINES_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue[:HITS_PER_BATCH], self._queue[HITS_PER_BATCH:]
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)
        self._schedule()  # the rest, if a call may still leave

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._schedule()

    async def _send(self, batch: list[_QueuedHit]) -> None:
        try:
            await self._send_batch(batch)
        except Exception as exc:
            # A bug must fail its requests, never leave them waiting forever.
            _fail(batch, exc)
            raise

    async def _send_batch(self, batch: list[_QueuedHit]) -> None:
        groups: dict[str, list[_QueuedHit]] = {}
        for item in batch:
            groups.setdefault(item.request.site, []).append(item)
        chunks = [
            items[i : i + MAX_HITS_PER_CALL]
            for items in groups.values()
            for i in range(0, len(items), MAX_HITS_PER_CALL)
        ]
        calls = [hits_call([item.request for item in chunk]) for chunk in chunks]
        try:
            results, _ = await run_scripts(self._redis, calls)
        except CLIENT_ERRORS as exc:
            _fail(batch, _unavailable(exc))
            return
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, Exception):
                _fail(chunk, _unavailable(result))
                continue
            for i, item in enumerate(chunk):
                if item.future.done():  # the request went away; its hit still counted
                    continue
                if result[0] == 0:
                    item.future.set_result(None)
                else:
                    outcome, page_views, site_views = result[1 + 3 * i : 4 + 3 * i]
                    item.future.set_result(HitResult(OUTCOMES[outcome], page_views, site_views))

    async def drain(self) -> None:
        """Wait for the calls in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail(items: list[_QueuedHit], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


class CounterStore:
    """Counting state in Redis, exposed as typed methods; wraps Redis errors as ours."""

    def __init__(self, redis: Client) -> None:
        self.redis = redis
        self._hits = _HitBatcher(redis)
        self._node_clients: dict[str, Redis] = {}

    async def register_scripts(self) -> None:
        """Load every script so the first calls need no NOSCRIPT recovery."""
        try:
            for script in scripts.ALL:
                await self.redis.script_load(script.source)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        """Finish pipelines in flight, then close the client."""
        await self._hits.drain()
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
        """Take one page view; None when the site is not loaded (nothing written then)."""
        return await self._hits.hit(request)

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
        """Take many page views of one site, MAX_HITS_PER_CALL per script call, each call
        idempotent under `idempotency_token` and its position: sent again (a retry after a
        failure part-way), the calls that ran answer what they did and count nothing. None
        when the site is not loaded."""
        calls = [
            hits_call(requests[i : i + MAX_HITS_PER_CALL], f"{idempotency_token}:{n}", keep_s)
            for n, i in enumerate(range(0, len(requests), MAX_HITS_PER_CALL))
        ]
        answers: list[HitResult] = []
        for result in await self._run(calls):
            if result[0] == 0:
                return None
            for i in range(1, len(result), 3):
                outcome, page_views, site_views = result[i : i + 3]
                answers.append(HitResult(OUTCOMES[int(outcome)], int(page_views), int(site_views)))
        return answers

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
        None when the site is not loaded."""
        key_list = [keys.site_key(site), keys.pages_key(site), keys.site_visitors_key(site, day)]
        key_list.extend(keys.page_visitors_key(site, day, page) for page in pages)
        result = await self._eval(scripts.COUNTS, key_list, pages)
        if result[0] == 0:
            return None
        return Counts(
            site_views=int(result[1]),
            pages={page: int(v) for page, v in zip(pages, result[3::2], strict=True)},
            site_visitors=int(result[2]),
            page_visitors={page: int(v) for page, v in zip(pages, result[4::2], strict=True)},
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
        """Record changed settings (and newly registered pages) of a loaded site; False (and
        nothing written) when it is not loaded: its next load brings them from Postgres."""
        loaded = await self._eval(
            scripts.SET_CONFIG,
            (keys.site_key(site), keys.pages_key(site)),
            (config.timezone, config.to_json(), *new_pages),
        )
        return bool(loaded)

    async def visitor_estimates(
        self, site_days: Sequence[tuple[str, str]], page_days: Sequence[tuple[str, str, str]]
    ) -> tuple[list[int], list[int]]:
        """Distinct-visitor estimates of (site, day) and (site, page, day) buckets, in order."""
        # One script call per site and chunk: a site's sketches share its Cluster slot.
        wanted = [(site, keys.site_visitors_key(site, day)) for site, day in site_days]
        wanted += [(site, keys.page_visitors_key(site, day, page)) for site, page, day in page_days]
        by_site: dict[str, list[int]] = {}
        for i, (site, _) in enumerate(wanted):
            by_site.setdefault(site, []).append(i)
        calls: list[Call] = []
        slots: list[list[int]] = []
        for indexes in by_site.values():
            for start in range(0, len(indexes), VISITOR_READ_CHUNK):
                chunk = indexes[start : start + VISITOR_READ_CHUNK]
                calls.append((scripts.VISITORS, len(chunk), [wanted[i][1] for i in chunk]))
                slots.append(chunk)
        values = [0] * len(wanted)
        for chunk, result in zip(slots, await self._run(calls), strict=True):
            for i, value in zip(chunk, result, strict=True):
                values[i] = int(value)
        return values[: len(site_days)], values[len(site_days) :]

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

    async def load_pages(self, site: str, totals: Sequence[tuple[str, int]]) -> bool:
        """Write page totals of an unloaded site; False when the site got loaded meanwhile."""
        flat: list[str | int] = []
        for page, total in totals:
            flat.extend((page, total))
        loaded = await self._eval(
            scripts.LOAD_PAGES, (keys.site_key(site), keys.pages_key(site)), flat
        )
        return bool(loaded)

    async def load_site(
        self, site: str, generation: str, site_total: int, config: SiteConfig
    ) -> bool:
        """Mark the site loaded with its total and settings; False when another loader
        finished first."""
        loaded = await self._eval(
            scripts.LOAD_SITE,
            (keys.site_key(site),),
            (generation, site_total, config.timezone, config.to_json()),
        )
        return bool(loaded)

    async def generation(self, site: str) -> str | None:
        """The site's load generation; it changes only when Redis lost the site and was refilled."""
        try:
            gen = await self.redis.hget(keys.site_key(site), keys.SITE_GEN)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        return cast(str | None, gen)

    async def snapshot(
        self, batches: Mapping[str, str], fsync_timeout_ms: int | None
    ) -> tuple[list[Snapshot], bool | None]:
        """Freeze the non-empty pending shards of each site in `batches` (site -> batch id)
        under its batch id, in one pipeline.

        With `fsync_timeout_ms`, also wait (WAITAOF) until the moves are in Redis' AOF on disk,
        so a Redis crash cannot roll them back after a batch reached Postgres; the second
        value says whether that was confirmed (None: the server cannot confirm it).
        """
        sites = list(batches)
        calls: list[Call] = []
        targets: list[list[str]] = []
        for site, batch_id in batches.items():
            site_targets = [
                keys.snapshot_key(site, shard, batch_id) for shard in range(keys.PENDING_SHARDS)
            ]
            argv = [keys.site_key(site)]
            for shard, target in enumerate(site_targets):
                argv.extend((keys.pending_key(site, shard), target))
            calls.append((scripts.SNAPSHOT, len(argv), argv))
            targets.append(site_targets)
        try:
            if isinstance(self.redis, RedisCluster) and fsync_timeout_ms is not None:
                results, fsynced = await self._snapshot_per_node(sites, calls, fsync_timeout_ms)
            else:
                results, fsynced = await run_scripts(self.redis, calls, fsync_timeout_ms)
        except CLIENT_ERRORS as exc:
            raise _unavailable(exc) from exc
        snapshots = []
        for site, site_targets, result in zip(sites, targets, results, strict=True):
            if isinstance(result, Exception):
                raise _unavailable(result)
            moved = [site_targets[i] for i in result[1:]]
            snapshots.append(Snapshot(site=site, generation=result[0], keys=moved))
        return snapshots, fsynced

    async def _snapshot_per_node(
        self, sites: Sequence[str], calls: Sequence[Call], fsync_timeout_ms: int
    ) -> tuple[list[Any], bool | None]:
        # WAITAOF waits for the writes of its own connection: on a Cluster, each node's
        # snapshots and their WAITAOF go down one connection to that node.
        groups: dict[int, tuple[Redis, list[int]]] = {}
        for i, site in enumerate(sites):
            client = self._node_client(keys.site_key(site))
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

    async def take_leases(self, sites: Sequence[str], owner: str, lease_ms: int) -> set[str]:
        """Take or renew the flush lease of each site; the sites whose lease `owner` holds."""
        calls: list[Call] = [
            (scripts.LEASE, 1, [keys.lease_key(s), owner, lease_ms]) for s in sites
        ]
        results = await self._run(calls)
        return {site for site, result in zip(sites, results, strict=True) if result[0] == 1}

    async def release_leases(self, sites: Sequence[str], owner: str) -> None:
        """Give up the flush leases `owner` holds among `sites`."""
        await self._run([(scripts.RELEASE, 1, [keys.lease_key(s), owner]) for s in sites])

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
        """Sites with pending deltas, and snapshot keys left in Redis grouped by batch id."""
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
        still loaded under `generation` and the chunk is newer than the last one applied:
        1 applied, 2 applied before, 0 not this generation (a load since included it)."""
        flat: list[str | int] = [generation, change_id, chunk, site_delta]
        for page, delta in page_deltas:
            flat.extend((page, delta))
        return int(
            await self._eval(
                scripts.APPLY_BASELINE, (keys.site_key(site), keys.pages_key(site)), flat
            )
        )
