"""The Lua scripts, loaded once from package files and called by sha, and the runner that
sends script calls (in one pipeline; on a Cluster, concurrently, each on its node).

Only the modules of this package call these; nothing outside it sees KEYS or ARGV.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from services.counter import client
from services.counter.client import Client

# Script calls one batch sends to a Cluster at once; keep VIEWCOUNTER_REDIS_MAX_CONNECTIONS
# (per node there) above groupcommit.PIPELINES_IN_FLIGHT times this.
CLUSTER_CALLS_AT_ONCE = 4


@dataclass(frozen=True)
class Script:
    """A Lua script's source and sha1, as Redis names it for EVALSHA."""

    name: str
    source: str
    sha: str


def _load(name: str) -> Script:
    source = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


HITS = _load("hits")
COUNTS = _load("counts")
LOAD_PAGES = _load("load_pages")
LOAD_SITE = _load("load_site")
SNAPSHOT = _load("snapshot")
REHOME = _load("rehome")
SET_CONFIG = _load("set_config")
LEASE = _load("lease")
RELEASE = _load("release")
VISITORS = _load("visitors")
APPLY_BASELINE = _load("apply_baseline")
MERGE_VISITORS = _load("merge_visitors")
FLUSHERS = _load("flushers")
MIGRATE_PAGES = _load("migrate_pages")
FORGET_TITLES = _load("forget_titles")
STATS = _load("stats")
FILL_DAYS = _load("fill_days")
PRUNE_DAYS = _load("prune_days")
DROP = _load("drop")
WORK = _load("work")
REINDEX = _load("reindex")
ALL = (
    HITS,
    COUNTS,
    LOAD_PAGES,
    LOAD_SITE,
    SNAPSHOT,
    REHOME,
    SET_CONFIG,
    LEASE,
    RELEASE,
    VISITORS,
    APPLY_BASELINE,
    MERGE_VISITORS,
    FLUSHERS,
    MIGRATE_PAGES,
    FORGET_TITLES,
    STATS,
    FILL_DAYS,
    PRUNE_DAYS,
    DROP,
    WORK,
    REINDEX,
)

# One script call: the script, how many of its arguments are KEYS, then KEYS and ARGV.
Call = tuple[Script, int, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Wait:
    """What a pipeline's writes wait for on their own connection, at most `timeout_ms`: the
    local AOF fsync (`local`), and `replicas` replicas having them (WAITAOF's numreplicas
    where the server has WAITAOF, and WAIT as well: a Redis older than 7.2 has only WAIT)."""

    timeout_ms: int
    local: bool = True
    replicas: int = 0

    def commands(self) -> list[tuple[Any, ...]]:
        """The commands that follow the writes in their pipeline."""
        out: list[tuple[Any, ...]] = [
            ("WAITAOF", 1 if self.local else 0, self.replicas, self.timeout_ms)
        ]
        if self.replicas:
            out.append(("WAIT", self.replicas, self.timeout_ms))
        return out

    def confirmed(self, answers: Sequence[Any]) -> bool | None:
        """Whether the answers of `commands()` confirm the wait: True, False (not in time),
        or None when the server cannot confirm the local fsync (AOF off, Redis < 7.2) but
        everything else was confirmed."""
        waitaof = answers[0]
        if self.replicas:
            wait = answers[1]
            if isinstance(wait, Exception) or int(wait) < self.replicas:
                return False
            if not isinstance(waitaof, Exception) and int(waitaof[1]) < self.replicas:
                return False  # in the replicas' memory, not yet in their AOF
        if isinstance(waitaof, Exception):
            return None if self.local else True
        return int(waitaof[0]) >= 1 if self.local else True


async def _one_script(redis: Client, call: Call) -> Any:
    script, numkeys, argv = call
    try:
        return await redis.evalsha(script.sha, numkeys, *argv)
    except redis_errors.ResponseError as exc:
        return exc


async def _send_scripts(
    redis: Client, batch: Sequence[Call], wait: Wait | None
) -> tuple[list[Any], bool | None]:
    if len(batch) == 1 and wait is None:
        # One call (the usual hit batch: one site): a pipeline's bookkeeping costs more than
        # the call itself.
        return [await _one_script(redis, batch[0])], None
    if isinstance(redis, RedisCluster):
        # redis-py's Cluster pipelines refuse EVALSHA: the calls (one per site, each on its
        # slot's node) go out concurrently instead. WAITAOF needs one connection: the flush
        # store sends it through a node's own client.
        if wait is not None:
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
            if isinstance(answer, BaseException) and not isinstance(answer, client.CLIENT_ERRORS):
                raise answer  # cancellation, or a bug: not a Redis failure
        return answers, None
    async with redis.pipeline(transaction=False) as pipe:
        for script, numkeys, argv in batch:
            pipe.evalsha(script.sha, numkeys, *argv)
        waits = wait.commands() if wait is not None else []
        for command in waits:
            pipe.execute_command(*command)
        out: list[Any] = await pipe.execute(raise_on_error=False)
    if wait is None:
        return out, None
    confirmed = wait.confirmed(out[len(out) - len(waits) :])
    return out[: len(out) - len(waits)], confirmed


async def run_scripts(
    redis: Client, calls: Sequence[Call], wait: Wait | None = None
) -> tuple[list[Any], bool | None]:
    """Run script calls in one pipeline (on a Cluster: concurrently, each on its node);
    per-call errors come back as exception values, a failed pipeline raises CLIENT_ERRORS.

    With `wait`, WAITAOF (and WAIT, when it asks for replicas) follow on the same connection,
    and the second value says whether the writes were confirmed in time: True, False (timed
    out), or None when the server cannot confirm the local fsync (AOF off, or a Redis older
    than 7.2).
    """
    results, fsynced = await _send_scripts(redis, calls, wait)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis_errors.NoScriptError)]
    if missing:
        # NOSCRIPT means the call did not run (SCRIPT FLUSH, failover): safe to send again.
        for script in {calls[i][0] for i in missing}:
            await redis.script_load(script.source)
        again, fsynced = await _send_scripts(redis, [calls[i] for i in missing], wait)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results, fsynced


async def run(redis: Client, calls: Sequence[Call], timeout_s: float | None = None) -> list[Any]:
    """The answers of `calls`, in order; CounterUnavailable when any of them failed, or (with
    `timeout_s`) when they were not all answered that soon or by the enclosing
    `client.deadline` (the calls' outcome is unknown then: a call sent may still run)."""
    if not calls:
        return []
    with client.translated():
        results, _ = await client.bounded(timeout_s, run_scripts(redis, calls))
    return client.raise_failed(results)


async def call(redis: Client, script: Script, key_list: Sequence[str], args: Sequence[Any]) -> Any:
    """The answer of one call of `script`; CounterUnavailable when it failed."""
    return (await run(redis, [(script, len(key_list), [*key_list, *args])]))[0]
