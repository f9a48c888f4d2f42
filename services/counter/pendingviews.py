"""Views counted in Redis and not yet moved to Postgres, per page and local day (the pending
shards), for reads that add them to Postgres' daily counts (the most-read list)."""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from services.counter import client, keys
from services.counter.client import Client
from services.counter.units import Units

# Fields asked for per HSCAN call: a pending shard holds what arrived since the last flush
# (a few seconds' distinct page-days), usually one call; never one huge reply, even after a
# long flusher outage.
SCAN_COUNT = 1000


class PendingViews:
    """Reads of the pending shards; Redis errors raise CounterUnavailable. Never closes the
    client it is given."""

    def __init__(self, redis: Client, units: Units) -> None:
        self._redis = redis
        self._units = units

    async def of_days(self, site: str, days: Collection[str]) -> dict[str, int]:
        """page -> views counted on the local `days` (YYYY-MM-DD) of `site` and not yet in
        Postgres. Snapshots being flushed are not included (nor are they in Postgres until
        their batch commits)."""
        totals: dict[str, int] = {}
        for unit in self._units.of(site):
            shards = [keys.pending_key(unit, shard) for shard in range(keys.PENDING_SHARDS)]
            with client.translated():
                # One round trip for the first page of every shard (a unit's keys share a slot).
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in shards:
                        pipe.hscan(key, 0, count=SCAN_COUNT)
                    firsts = await pipe.execute()
                for key, (cursor, found) in zip(shards, firsts, strict=True):
                    fields: dict[str, str] = dict(found)
                    while int(cursor) != 0:
                        # HSCAN may return a field twice: keyed by field, it counts once.
                        cursor, more = await self._redis.hscan(key, cursor, count=SCAN_COUNT)
                        fields.update(cast(dict[str, str], more))
                    for field, value in fields.items():
                        day, page = keys.split_pending_field(field)
                        if day in days:
                            totals[page] = totals.get(page, 0) + int(value)
        return totals
