"""What the ledger asks Redis while it applies a batch, answered by the flusher's store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.counter.flushstore import FlushStore


class RedisBatchChecks:
    """The ledger's BatchChecks, answered by the flusher's store for one batch."""

    def __init__(self, store: FlushStore, generations: Mapping[str, str | None]) -> None:
        self._store = store
        self._expected = dict(generations)  # each unit's load generation when it was frozen
        self.stale: set[str] = set()  # the units found with another generation

    async def still_current(self) -> bool:
        """Whether every unit of the batch still has the generation it was frozen under
        (read in one pipeline); those that do not are left in `stale`."""
        now = await self._store.generations(sorted(self._expected))
        self.stale = {unit for unit, gen in self._expected.items() if now[unit] != gen}
        return not self.stale

    async def site_visitors(self, site_days: Sequence[tuple[str, str]]) -> list[int]:
        """The sites' distinct-visitor estimates of those days, in order."""
        estimates, _ = await self._store.visitor_estimates(site_days, ())
        return estimates
