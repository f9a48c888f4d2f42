"""A control for the `idle` figure: Redis' CPU per command with and without 1,000,000 live
dedupe marks, for a PING and for one work.lua call (the flusher's read of the work index).

    .venv/bin/python -m bench.keyspace_overhead

Starts its own Redis (AOF everysec), sends 5,000 of each command one at a time, reads
`INFO cpu` before and after and over a sleep as long (Redis' own background), then writes
1,000,000 marks, waits for the AOF rewrite and 3 s more, and does it again. It tells what a
large keyspace of keys with a TTL costs Redis per command whatever the command is.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from services.cli.localredis import RedisProcess
from services.counter import keys, scripts

COMMANDS = 5000
MARKS_LUA = (
    "for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do "
    "redis.call('SET', ARGV[1] .. i, '1', 'EX', 3600) end return 1"
)


async def _cpu(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _measure(redis: aioredis.Redis, label: str) -> None:
    for what in ("PING", "work.lua"):
        await asyncio.sleep(3)
        before, wall = await _cpu(redis), time.perf_counter()
        for _ in range(COMMANDS):
            if what == "PING":
                await redis.ping()
            else:
                await redis.evalsha(
                    scripts.WORK.sha, 0, "list", keys.work_key(0), keys.snaps_key(0)
                )
        wall = time.perf_counter() - wall
        cpu = await _cpu(redis) - before
        before = await _cpu(redis)
        await asyncio.sleep(wall)
        background = await _cpu(redis) - before
        print(
            f"{label:<10} {COMMANDS} x {what:<8} Redis CPU {cpu * 1000:4.0f} ms,"
            f" background over as long {background * 1000:3.0f} ms, wall {wall:.2f} s",
            flush=True,
        )


async def main() -> None:
    """Both sides, printed."""
    with tempfile.TemporaryDirectory(prefix="vc-keyspace-") as tmp:
        server = RedisProcess(Path(tmp) / "redis", appendonly=True, appendfsync="everysec")
        server.start()
        try:
            redis = aioredis.Redis.from_url(server.url)
            await redis.script_load(scripts.WORK.source)
            await _measure(redis, "no marks")
            # One key a mark: the layout before hash marks (the worst case for a keyspace walk).
            for first in range(0, 1_000_000, 100_000):
                prefix = f"{keys.tag('wi')}:seen:bench-"
                await redis.eval(MARKS_LUA, 0, prefix, first, first + 99_999)
            for _ in range(600):  # the AOF rewrite the writes set off: at most 2 min
                if not (await redis.info("persistence"))["aof_rewrite_in_progress"]:
                    break
                await asyncio.sleep(0.2)
            await _measure(redis, "1M marks")
            await redis.aclose()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
