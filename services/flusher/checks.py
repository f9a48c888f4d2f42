"""What the ledger asks Redis while it applies a batch, answered by the flusher's store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.counter.flushstore import FlushStore


class RedisBatchChecks:
    """The ledger's BatchChecks, answered by the flusher's store for one batch."""

    def __init__(
        self, store: FlushStore, generations: Mapping[str, str | None]
    ) -> None:
        self._store = store
        self._expected = dict(generations)  # each unit's load generation when it was frozen

    async def still_current(self) -> bool:
        """Whether every unit of the batch still has the generation it was frozen under."""
        for unit, gen in self._expected.items():
            if await self._store.generation(unit) != gen:
                return False
        return True

    async def site_visitors(self, site_days: Sequence[tuple[str, str]]) -> list[int]:
        """The sites' distinct-visitor estimates of those days, in order."""
        estimates, _ = await self._store.visitor_estimates(site_days, ())
        return estimates
