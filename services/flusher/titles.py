"""After a pass: titles learned from hits go to Postgres (docs/statistics.md, Most read)."""

from __future__ import annotations

from services.counter.flushstore import FlushStore
from services.db import titles as db_titles


async def move_learned(store: FlushStore, titles: db_titles.Titles, unit_ids: set[str]) -> int:
    """Move the titles the units learned into Postgres; how many moved.

    The last title seen per page wins, and moving it twice writes the same value, so no ledger
    is needed (a title is not a count); a title leaves Redis only if no newer one came since.
    """
    moved = 0
    for unit in sorted(unit_ids):
        site = store.site_of(unit)
        async for chunk in store.learned_titles(unit):
            await titles.learn(site, chunk)
            await store.forget_titles(unit, chunk)
            moved += len(chunk)
    return moved
