"""After a pass: keep the days hashes of the units just flushed bounded, and fill those an
earlier release loaded (no days hash yet) from Postgres, once (docs/statistics.md)."""

from __future__ import annotations

import logging

from services.counter import stats as counter_stats
from services.counter.errors import CounterUnavailable
from services.counter.flushstore import FlushStore
from services.db import errors as db_errors
from services.db import sites as db_sites

log = logging.getLogger("viewcounter.flusher")


async def keep_days(
    store: FlushStore, sites: db_sites.Sites, unit_ids: set[str], now_s: float
) -> None:
    """Drop days older than kept from the units' days hashes, and fill the ones not exact.

    Called right after the units' batches committed, under their leases, so no snapshot of
    theirs is in flight: Postgres then holds everything but their pending deltas, which the
    fill script reads in the same atomic step as it writes. Failures are logged; the next
    pass tries again (the batches are committed either way).
    """
    if not unit_ids:
        return
    oldest = counter_stats.oldest_day_kept(now_s)
    try:
        unfilled = await store.prune_days(sorted(unit_ids), oldest.isoformat())
        for site, site_units in sorted(unfilled.items()):
            generations: dict[str, str] = {}
            for unit in site_units:
                # Read before Postgres: a refill in between changes it, and the fill then
                # writes nothing (the load filled the hash itself).
                gen = await store.generation(unit)
                if gen is not None:  # not loaded: its load fills the hash
                    generations[unit] = gen
            if not generations:
                continue
            rows = await sites.recent_days(site, oldest, by_page=store.split)
            filled = await store.fill_days(site, generations, rows)
            log.info("days filled from postgres", extra={"site": site, "units": filled})
    except (CounterUnavailable, db_errors.DatabaseUnavailable) as exc:
        log.warning("days not pruned or filled: %s", exc, extra={"error": str(exc)})
