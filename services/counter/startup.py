"""Start-up and health checks of Redis: scripts loaded, the unit layout (and moving page
totals of older releases into page buckets), no eviction, answers, memory."""

from __future__ import annotations

import logging
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from services.counter import client, keys, scripts
from services.counter.client import Client
from services.counter.errors import LayoutMismatch, UnsafeRedis
from services.counter.outcomes import RedisMemory, RedisPersistence

log = logging.getLogger("viewcounter.store")

MIGRATE_CHUNK = 500
MIGRATE_SCAN_COUNT = 1000


async def register_scripts(redis: Client) -> None:
    """Load every script so the first calls need no NOSCRIPT recovery."""
    with client.translated():
        for script in scripts.ALL:
            await redis.script_load(script.source)


async def check_layout(redis: Client, units: int) -> None:
    """Raise LayoutMismatch when this Redis holds counts split over another number of
    units; record ours when it holds none (after moving page totals written by releases
    before page buckets into the buckets)."""
    with client.translated():
        if not await redis.exists(keys.LAYOUT_KEY):
            await _migrate_page_hashes(redis)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.LAYOUT_KEY, units, nx=True)
            pipe.get(keys.LAYOUT_KEY)
            _, recorded = await pipe.execute()
    if int(recorded) != units:
        raise LayoutMismatch(
            f"Redis holds sites split over {recorded} units, VIEWCOUNTER_SHARDS says "
            f"{units}: set it back, or drain Redis first (docs/scaling.md)"
        )


async def check_recorded_layout(redis: Client, units: int) -> None:
    """Raise LayoutMismatch when this Redis records another number of units (read only: a
    Redis that records none, empty or just restarted, gets ours from `check_layout`)."""
    with client.translated():
        recorded = cast(str | None, await redis.get(keys.LAYOUT_KEY))  # decode_responses
    if recorded is not None and int(recorded) != units:
        raise LayoutMismatch(
            f"Redis holds sites split over {recorded} units, VIEWCOUNTER_SHARDS says "
            f"{units}: set it back, or drain Redis first (docs/scaling.md)"
        )


async def _migrate_page_hashes(redis: Client) -> None:
    async for old in redis.scan_iter(match=keys.LEGACY_PAGES_PATTERN, count=MIGRATE_SCAN_COUNT):
        unit = keys.parse_legacy_pages_key(old)
        if unit is None:
            continue
        while True:
            # The script removes what it moves: a scan from the start finds the rest.
            _, chunk = await redis.hscan(old, 0, count=MIGRATE_CHUNK)
            if not chunk:
                break
            pages = cast(dict[str, str], chunk)  # decode_responses: page ids as str
            entries = [(page, *keys.page_entry(unit, page)) for page in pages]
            key_list = [old, keys.site_key(unit), *(bucket for _, bucket, _ in entries)]
            pairs = [x for page, _, field in entries for x in (page, field)]
            await scripts.call(redis, scripts.MIGRATE_PAGES, key_list, pairs)
        log.info("page totals of %s moved into page buckets", unit)


async def refuse_eviction(redis: Client) -> None:
    """Raise UnsafeRedis when maxmemory-policy may evict keys without a TTL.

    Managed services that forbid CONFIG GET are given the benefit of the doubt.
    """
    with client.translated():
        try:
            if isinstance(redis, RedisCluster):
                per_node = await redis.config_get(
                    "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
                )
                confs: list[Any] = list(per_node.values())
            else:
                confs = [await redis.config_get("maxmemory-policy")]
        except redis_errors.ResponseError:
            return  # CONFIG is forbidden here
    for conf in confs:
        policy = conf.get("maxmemory-policy") or "noeviction"
        if policy.startswith("allkeys-"):
            raise UnsafeRedis(
                f"Redis maxmemory-policy is {policy}: it would evict unflushed counts; "
                "set it to noeviction"
            )


async def ping(redis: Client) -> None:
    """Raise CounterUnavailable unless Redis answers."""
    with client.translated():
        await redis.ping()


async def memory(redis: Client) -> RedisMemory:
    """Redis' used memory and its maxmemory bound (of a Cluster: the fullest primary)."""
    with client.translated():
        if isinstance(redis, RedisCluster):
            per_node = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
            infos = list(per_node.values())
        else:
            infos = [await redis.info("memory")]
    readings = [
        RedisMemory(int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))
        for info in infos
    ]
    return max(readings, key=lambda m: (m.ratio or 0.0, m.used_bytes))


async def persistence(redis: Client) -> RedisPersistence:
    """How Redis' last writes to disk went (of a Cluster: every primary's, the worst)."""
    with client.translated():
        if isinstance(redis, RedisCluster):
            per_node = await redis.info("persistence", target_nodes=RedisCluster.PRIMARIES)
            infos = list(per_node.values())
        else:
            infos = [await redis.info("persistence")]
    return RedisPersistence(
        aof_write_ok=all(info.get("aof_last_write_status", "ok") == "ok" for info in infos),
        rdb_save_ok=all(info.get("rdb_last_bgsave_status", "ok") == "ok" for info in infos),
        aof_rewrite_ok=all(info.get("aof_last_bgrewrite_status", "ok") == "ok" for info in infos),
    )
