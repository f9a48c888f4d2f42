"""Issue 15's Redis-memory figures (bench/suite.py `marks`, `idem`, `pages-curve`).

- Bytes per dedupe mark: `count` marks written by hits.lua itself (HitStore.hit, a new
  visitor each, one page), the growth of used_memory and the MEMORY USAGE of the marks'
  hashes divided by `count`.
- Live marks for the hit-rate ratio: `fill_marks` writes synthetic marks into the hashes the
  api's hits read (the current generation of the site's unit and window), pipelined, as
  hits.lua lays them out, so the api meets a million of them without a million hits first.
- Bytes kept per batch view: the MEMORY USAGE of the idempotency records a 10,000-view batch
  leaves, with and without an Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.request
from typing import Any

import redis as redis_sync

from services.counter import client as counter_client
from services.counter import keys, startup, visitors
from services.counter.outcomes import HitRequest, Outcome, PageRule
from services.counter.units import Units

MARK_PAGE = "marks/page"
FILL_PIPELINE = 5_000


def _usage(client: redis_sync.Redis, pattern: str) -> tuple[int, int, dict[str, int]]:
    """(keys, summed MEMORY USAGE, encodings) of the keys matching `pattern`."""
    found = total = 0
    encodings: dict[str, int] = {}
    for key in client.scan_iter(match=pattern, count=1000):
        found += 1
        total += int(client.memory_usage(key, samples=0) or 0)
        encoding = client.object("encoding", key)
        name = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        encodings[name] = encodings.get(name, 0) + 1
    return found, total, encodings


async def _hit_marks(url: str, site: str, count: int, window_s: int) -> None:
    from services.counter.hitstore import HitStore

    redis = counter_client.connect(url, max_connections=8, timeout_s=30)
    store = HitStore(redis, Units(redis, 1))
    try:
        await startup.register_scripts(redis)
        salt = secrets.token_bytes(32)
        now = int(time.time())
        for start in range(0, count, 1000):
            chunk = [
                HitRequest(
                    site,
                    MARK_PAGE,
                    "2026-01-01",
                    visitors.seen_token(salt, f"m{i}", MARK_PAGE),
                    window_s,
                    "-",
                    now,
                    0,
                    PageRule.any_page(),
                    "m",
                )  # fmt: skip
                for i in range(start, min(count, start + 1000))
            ]
            results = await asyncio.gather(*(store.hit(r) for r in chunk))
            if any(r is None or r.outcome is not Outcome.COUNTED for r in results):
                raise SystemExit("marks: a hit was not counted")
    finally:
        await store.close()
        await redis.aclose()


def bytes_per_mark(url: str, site: str, count: int, window_s: int = 1800) -> dict[str, Any]:
    """Write `count` marks through hits.lua into `site`'s unit (loaded by the caller); the
    bytes each costs."""
    client = redis_sync.Redis.from_url(url)
    try:
        pattern = f"{keys.tag(site)}:seen:*"
        before = int(client.info("memory")["used_memory"])
        _, usage_before, _ = _usage(client, pattern)
        asyncio.run(_hit_marks(url, site, count, window_s))
        after = int(client.info("memory")["used_memory"])
        hashes, usage, encodings = _usage(client, pattern)
        server = client.info("server")
    finally:
        client.close()
    return {
        "marks": count,
        "used_memory_per_mark": (after - before) / count,
        "memory_usage_per_mark": (usage - usage_before) / count,
        "hashes": hashes,
        "encodings": encodings,
        "server": f"{server.get('server_name', 'redis')} "
        f"{server.get('valkey_version', server['redis_version'])}",
    }


def fill_marks(url: str, site: str, count: int, window_s: int = 1800) -> int:
    """`count` synthetic marks in `site`'s current generation (as hits.lua writes them);
    the keyspace's size after."""
    client = redis_sync.Redis.from_url(url)
    try:
        generation, at = keys.seen_generation(int(time.time()), window_s)
        for start in range(0, count, FILL_PIPELINE):
            pipe = client.pipeline(transaction=False)
            for _ in range(start, min(count, start + FILL_PIPELINE)):
                key, _, mark = keys.seen_entry(site, secrets.token_hex(12), window_s, generation)
                pipe.hset(key, mark, at)
                pipe.expire(key, 2 * window_s - at + 1, nx=True)
            pipe.execute()
        return int(client.dbsize())
    finally:
        client.close()


def idempotency_bytes(
    url: str, port: int, site: str, token: str, views: int, key: str | None
) -> dict[str, Any]:
    """POST one batch of `views` new views (with `key` as its Idempotency-Key); the bytes of
    idempotency records it left."""
    client = redis_sync.Redis.from_url(url)
    pattern = keys.idempotency_key("*", "*")
    try:
        _, before, _ = _usage(client, pattern)
        run_id = secrets.token_hex(4)
        hits = [{"page": f"idem/{i % 1000}", "visitor": f"i{run_id}-{i}"} for i in range(views)]
        body = json.dumps({"hits": hits}).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        if key is not None:
            headers["idempotency-key"] = key
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/sites/{site}/hits/batch", body, headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        records, after, _ = _usage(client, pattern)
    finally:
        client.close()
    if answer["outcomes"]["counted"] != views:
        raise SystemExit(f"idem: {answer}")
    return {"views": views, "records": records, "bytes": after - before}


def old_layout_bytes_per_mark(url: str, count: int, window_s: int = 1800) -> float:
    """used_memory growth per mark of the layout before this one (a key per mark, SET NX EX),
    for the comparison; on an empty server."""
    client = redis_sync.Redis.from_url(url)
    try:
        before = int(client.info("memory")["used_memory"])
        for start in range(0, count, FILL_PIPELINE):
            pipe = client.pipeline(transaction=False)
            for _ in range(start, min(count, start + FILL_PIPELINE)):
                pipe.set(f"{keys.tag('m')}:seen:{secrets.token_hex(12)}", 1, nx=True, ex=window_s)
            pipe.execute()
        return (int(client.info("memory")["used_memory"]) - before) / count
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.marks SERVER_BINARY N...`: bytes per mark of the old layout and of
    hits.lua's, N marks each, on a fresh server of that binary per measurement."""
    import argparse
    import os
    import tempfile
    from pathlib import Path

    from services.cli.localredis import RedisProcess
    from services.cli.localservers import REDIS_SERVER_ENV

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("server", help="a redis-server or valkey-server binary")
    parser.add_argument("counts", nargs="+", type=int)
    ns = parser.parse_args(argv)
    os.environ[REDIS_SERVER_ENV] = ns.server
    for count in ns.counts:
        for layout in ("old", "new"):
            with tempfile.TemporaryDirectory(prefix="vc-marks-") as tmp:
                server = RedisProcess(Path(tmp), appendonly=False)
                server.start()
                try:
                    if layout == "old":
                        per_mark = old_layout_bytes_per_mark(server.url, count)
                        print(f"{count} marks, a key each: {per_mark:.1f} B a mark")
                    else:
                        client = redis_sync.Redis.from_url(server.url)
                        client.hset(
                            keys.site_key("m"), mapping={keys.SITE_GEN: "x", keys.SITE_VIEWS: 0}
                        )
                        client.close()
                        print(f"{count} marks, hits.lua: {bytes_per_mark(server.url, 'm', count)}")
                finally:
                    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
