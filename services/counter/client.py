"""Opening Redis clients, and the one place where Redis errors become CounterUnavailable."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.counter.errors import CounterUnavailable, PersistenceFailed

Client = Redis | RedisCluster
T = TypeVar("T")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
HEALTH_CHECK_INTERVAL_S = 30
_REDIS_OPTIONS = frozenset(inspect.signature(Redis.__init__).parameters)

# What a failing Redis (or its connection) raises. AttributeError too: redis-py's Cluster
# client can raise it when a node's connection is closed under it (a node restarted), and that
# must answer 503 like any lost connection, not 500.
CLIENT_ERRORS = (redis_errors.RedisError, OSError, TimeoutError, AttributeError)
# Those of CLIENT_ERRORS that say Redis could not be reached or did not answer in time (rather
# than answered with an error): the group commit then fails requests fast but for its probes.
# (redis-py's BusyLoadingError is a ConnectionError: a loading Redis is probed the same way.)
UNREACHABLE_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    TimeoutError,
)
# The error prefix of a write Redis refuses because it cannot persist it (AOF write or RDB
# save failing: a full or read-only disk).
MISCONF = "MISCONF"


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
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if url.startswith(CLUSTER_SCHEMES):
        return RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    # A unix:// or rediss:// URL keeps the connection class it names (its own packer).
    pool = BlockingConnectionPool.from_url(
        url, timeout=timeout_s, connection_class=HiredisPackConnection, **options
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its sockets


def unavailable(exc: BaseException) -> CounterUnavailable:
    """The CounterUnavailable that a Redis failure `exc` (one of CLIENT_ERRORS) stands for."""
    if isinstance(exc, redis_errors.BusyLoadingError):
        return CounterUnavailable("Redis is loading its data")
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(MISCONF):
        # Redis checks this before running a write (a script: before its first write, and
        # it cannot change within a script), so nothing of the call was applied.
        return PersistenceFailed(f"Redis refuses writes, it cannot persist them: {exc}")
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return CounterUnavailable("Redis is full (maxmemory reached)")
    if isinstance(exc, redis_errors.TimeoutError | asyncio.TimeoutError):
        return CounterUnavailable("Redis did not answer in time")
    if isinstance(exc, AttributeError):
        return CounterUnavailable(f"Redis connection lost: {exc}")
    return CounterUnavailable(f"Redis error: {exc}")


class _Translated:
    """`with translated():` raises CounterUnavailable for a Redis failure inside it."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, CLIENT_ERRORS):
            raise unavailable(exc) from exc


_TRANSLATED = _Translated()  # stateless: one for every use


def translated() -> _Translated:
    """A context manager turning Redis failures (CLIENT_ERRORS) into CounterUnavailable."""
    return _TRANSLATED


def raise_failed(results: list[Any]) -> list[Any]:
    """`results` of a pipeline or script calls, unless one is an error: then its
    CounterUnavailable."""
    for result in results:
        if isinstance(result, Exception):
            raise unavailable(result)
    return results


# When the Redis calls of the request in hand must all be answered (loop time), if it says.
_deadline: ContextVar[float | None] = ContextVar("viewcounter_redis_deadline", default=None)


@contextmanager
def deadline(timeout_s: float) -> Iterator[None]:
    """Inside the block, every bounded call (`bounded`) is answered by `timeout_s` from now,
    however many come one after the other: a request that makes several calls waits for
    Redis no longer than one that makes one."""
    token = _deadline.set(asyncio.get_running_loop().time() + timeout_s)
    try:
        yield
    finally:
        _deadline.reset(token)


async def bounded(timeout_s: float | None, work: Awaitable[T]) -> T:
    """`work`'s result, or TimeoutError (one of CLIENT_ERRORS: Redis did not answer in time)
    when it is not done `timeout_s` from now (the wait for a pooled connection included) or by
    the enclosing `deadline`, whichever comes first; None: no bound.

    On time, the work is cancelled and left to end by itself: redis-py may take up to its own
    socket timeout more to give up a connection it is opening (a cancellation does not always
    cut it short), and the caller is answered now, not then."""
    if timeout_s is None:
        return await work
    loop = asyncio.get_running_loop()
    when = loop.time() + timeout_s
    limit = _deadline.get()
    if limit is not None:
        when = min(when, limit)
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, when - loop.time()))
    except BaseException:  # the caller was cancelled: so is its work
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)
    raise TimeoutError("Redis did not answer in time")


# Calls given up on time that have not ended yet (held so they are not garbage collected).
_abandoned: set[asyncio.Future[Any]] = set()


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: its failure was answered already (as a timeout)


class NodeClients:
    """Plain clients of a Cluster's nodes, one per node, made on first use: commands that
    must share one connection (a write, then WAITAOF for it) go through them."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._clients: dict[str, Redis] = {}

    def of(self, key: str) -> Redis:
        """The client of the node holding `key`'s slot."""
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise CounterUnavailable(f"no Redis Cluster node holds {key}'s slot")
        return self._client(node)

    async def primaries(self) -> list[tuple[str, Redis, list[int]]]:
        """(name, client, the Cluster slots it serves) of each primary, as the Cluster
        client's slot map has them."""
        await self._cluster.initialize()  # (once; later calls return at once)
        slots: dict[str, tuple[ClusterNode, list[int]]] = {}
        for slot, nodes in sorted(self._cluster.nodes_manager.slots_cache.items()):
            if nodes:
                slots.setdefault(nodes[0].name, (nodes[0], []))[1].append(slot)
        return [(name, self._client(node), held) for name, (node, held) in sorted(slots.items())]

    def _client(self, node: ClusterNode) -> Redis:
        client = self._clients.get(node.name)
        if client is None:
            # The node's own connection options (auth, TLS, timeouts), as a plain client takes them.
            options = {
                k: v
                for k, v in node.connection_kwargs.items()
                if k in _REDIS_OPTIONS and k not in ("host", "port")
            }
            client = Redis(host=node.host, port=int(node.port), **options)
            self._clients[node.name] = client
        return client

    async def close(self) -> None:
        """Close the node clients made so far."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
