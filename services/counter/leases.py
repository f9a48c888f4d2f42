"""The flushers' heartbeat and their flush leases on units, in Redis (lease.lua, release.lua,
flushers.lua): several flushers share the units, a dead one's lapse by themselves."""

from __future__ import annotations

from collections.abc import Sequence

from services.counter import client, keys, scripts
from services.counter.client import Client
from services.counter.scripts import Call
from services.counter.units import Units

LEASE_GROUP = 1000  # leases one lease.lua call takes (of one slot, on a Cluster)


class Leases:
    """Heartbeat and leases; Redis errors raise CounterUnavailable."""

    def __init__(self, redis: Client, units: Units) -> None:
        self._redis = redis
        self._units = units

    async def alive(self, owner: str, lease_ms: int) -> list[str]:
        """Record that flusher `owner` is alive; the flushers alive within the last
        `lease_ms` (this one included). `lease_ms` -1: it is leaving."""
        alive = await scripts.call(
            self._redis, scripts.FLUSHERS, (keys.FLUSHERS_KEY,), (owner, lease_ms)
        )
        return [str(o) for o in alive]

    async def take(self, unit_ids: Sequence[str], owner: str, lease_ms: int) -> set[str]:
        """Take or renew the flush lease of each unit; the units whose lease `owner` holds.
        A unit whose node failed to answer is not held (the others are)."""
        groups = self._slot_groups(unit_ids)
        call_list: list[Call] = [
            (scripts.LEASE, len(group), [*(keys.lease_key(u) for u in group), owner, lease_ms])
            for group in groups
        ]
        if not call_list:
            return set()
        with client.translated():
            results, _ = await scripts.run_scripts(self._redis, call_list)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed and len(failed) == len(results):
            raise client.unavailable(failed[0])
        return {
            unit
            for group, result in zip(groups, results, strict=True)
            if not isinstance(result, Exception)
            for unit, held in zip(group, result, strict=True)
            if held == 1
        }

    def _slot_groups(self, unit_ids: Sequence[str]) -> list[list[str]]:
        """`unit_ids` in groups that one script call may take: LEASE_GROUP at most, all of
        one Cluster slot on a Cluster."""
        by_slot: dict[int, list[str]] = {}
        for unit in unit_ids:
            by_slot.setdefault(keys.work_slot(unit, self._units.per_slot), []).append(unit)
        return [
            units[i : i + LEASE_GROUP]
            for units in by_slot.values()
            for i in range(0, len(units), LEASE_GROUP)
        ]

    async def release(self, unit_ids: Sequence[str], owner: str) -> None:
        """Give up the flush leases `owner` holds among `unit_ids` (those whose node does not
        answer run out by themselves)."""
        if not unit_ids:
            return
        with client.translated():
            await scripts.run_scripts(
                self._redis,
                [
                    (scripts.RELEASE, len(group), [*(keys.lease_key(u) for u in group), owner])
                    for group in self._slot_groups(unit_ids)
                ],
            )
