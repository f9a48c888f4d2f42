"""The flusher: moves pending deltas from Redis into Postgres, exactly once.

The unit of work is a site's *unit* (counter/keys.py: a site is split by page over
VIEWCOUNTER_SHARDS units, one Redis Cluster slot each). One pass (`flush_once`):
1. find the units with pending deltas, and snapshots left by a crashed (or concurrent)
   flusher;
2. take or renew the flush lease of its share of those units: a unit is flushed by one
   flusher at a time, the flushers alive (each says so in Redis every pass) share the units
   out by rendezvous hashing (about evenly), and the units of a flusher that died are free,
   and shared out among the others, once its leases run out;
3. finish the leftover batches of the units it holds: a batch whose id is in the ledger is
   only deleted;
4. freeze the pending shards of each unit it holds under a new batch id per unit (RENAME,
   atomic), wait until Redis has that on disk (WAITAOF), apply each unit's deltas and insert
   its batch id into the ledger in one Postgres transaction, and only after COMMIT delete the
   snapshot.
A crash at any point leaves either the pending hash or a snapshot in Redis, and the ledger
decides whether that snapshot still needs applying. The ledger, not the lease, is what makes
the counts exact: a flusher that stalls past its lease (a long pause) and then carries on
cannot apply a batch twice; the lease only keeps flushers from doing the same work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence

from services.counter.baselinestore import BaselineStore
from services.counter.errors import CounterUnavailable
from services.counter.flushstore import FlushStore
from services.counter.snapshots import SnapshotRef, Work
from services.counting import baselines
from services.db import baselines as db_baselines
from services.db import errors as db_errors
from services.db import ledger as db_ledger
from services.db import sites as db_sites
from services.db import titles as db_titles
from services.flusher import batchrows, days, passes, titles
from services.flusher import metrics as flusher_metrics
from services.flusher.checks import RedisBatchChecks
from services.flusher.metrics import (
    DISCARDED_HITS,
    FLUSH_FAILURES,
    FLUSHED_BATCHES,
    FLUSHED_HITS,
    FLUSHED_ROWS,
    REPLAYED_BATCHES,
)
from services.flusher.passes import FlushDeferred, FlushReport, assigned_flusher, batch_id

log = logging.getLogger("viewcounter.flusher")

FSYNC_WAIT_MS = 2000
MAX_BACKOFF_S = 60.0
# Failed passes in a row after which the flusher reports not ready (its /readyz answers 503)
# until a pass succeeds: with the backoff, about 6 intervals after the first failure. Fewer
# would flap on a single Postgres hiccup; Postgres answering while every write fails (a full
# disk) must still show.
UNREADY_AFTER_FAILED_PASSES = 3
DEFAULT_LEASE_S = 15.0
# Rows read from Redis (and held in memory) at a time while a batch streams into Postgres.
FLUSH_CHUNK_ROWS = 10_000
# Units frozen into one batch (one transaction, one ledger row) at most: a few hits of each of
# 10,000 sites are 10 transactions, not 10,000.
UNITS_PER_BATCH = 1000


class Flusher:
    """Runs flush passes; `flush_once` is public so tests drive the real body."""

    def __init__(
        self,
        store: FlushStore,
        baseline_store: BaselineStore,
        ledger: db_ledger.Ledger,
        baselines: db_baselines.Baselines,
        *,
        interval_s: float,
        wait_fsync: bool = True,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.time,
        titles: db_titles.Titles | None = None,
        sites: db_sites.Sites | None = None,
    ) -> None:
        self._store = store
        # Learned titles and the days of units go to the ledger's database (their own
        # repositories, same pool).
        self._titles = db_titles.Titles(ledger.pool) if titles is None else titles
        self._sites = db_sites.Sites(ledger.pool) if sites is None else sites
        self._baseline_store = baseline_store
        self._ledger = ledger
        self._baselines = baselines
        self._interval_s = interval_s
        self._wait_fsync = wait_fsync
        self._clock = clock
        self.owner = secrets.token_hex(4)
        self._seq = 0
        self._warned_no_fsync = False
        self._lease_ms = max(1, int(lease_s * 1000))
        self._leased: set[str] = set()  # units whose lease this flusher took (to release)
        self._alive: list[str] = []  # the flushers alive at the last heartbeat that answered
        self._indexed = False  # whether this process made sure older work is indexed
        self.last_success: float | None = None
        self.consecutive_failures = 0  # passes failed in a row (0 after a success)
        self.last_error: str | None = None  # why the last failed pass failed

    def _new_batch_id(self) -> str:
        self._seq += 1
        return batch_id(self.owner, self._seq, self._clock())

    async def flush_once(self) -> FlushReport:
        """One pass: finish leftover batches, then move all pending deltas to Postgres.

        Work is found through the work index, node by node (on a single Redis, one node); a
        node that is down or slow fails only its own units' part of the pass, which the next
        pass retries, while the others' move on. The pass fails (and backs off) only when no
        node could be worked on, or Postgres failed.
        """
        report = FlushReport()
        pass_started = self._clock()  # metrics: the flush lag counts from here
        await self._index_older_work()
        work = await self._store.find_work()
        failed: dict[str, BaseException | str] = dict(work.failed)
        if not work.nodes:
            raise CounterUnavailable(f"no Redis node's work index could be read: {failed}")
        snapshot_count = sum(len(refs) for refs in work.batches.values())
        flusher_metrics.found_work(len(work.units), snapshot_count)
        leftover_units = {batch: {ref.unit for ref in refs} for batch, refs in work.batches.items()}
        wanted = set(work.units).union(*leftover_units.values())
        held = await self._take_share(wanted)
        await self._finish_leftovers(work, held, failed, report)
        # Units with a leftover snapshot not finished: in flight, so no days fill this pass.
        unfinished = set().union(*(u - held for u in leftover_units.values()))
        by_node: dict[str, list[str]] = {}
        for unit in sorted(set(work.units) & held):
            by_node.setdefault(work.units[unit], []).append(unit)
        flushed: set[str] = set()
        titled: set[str] = set()
        for node, node_units in sorted(by_node.items()):
            if node in failed:
                continue
            try:
                flushed_here, titled_here = await self._flush_units(node_units, report)
            except (CounterUnavailable, FlushDeferred) as exc:
                failed[node] = exc
                log.warning(
                    "flush of node %s failed, will retry: %s",
                    node,
                    exc,
                    extra={"node": node, "error": str(exc)},
                )
                continue
            flushed |= flushed_here
            titled |= titled_here
        try:
            report.titles += await titles.move_learned(self._store, self._titles, titled)
        except CounterUnavailable as exc:
            log.warning("learned titles not moved: %s", exc, extra={"error": str(exc)})
        await days.keep_days(self._store, self._sites, flushed - unfinished, self._clock())
        await self._settle_baselines()
        for node in work.nodes:
            if node not in failed:
                flusher_metrics.node_flushed(node, pass_started)
        passes.raise_if_every_node_failed(work.nodes, failed)
        self.last_success = self._clock()
        self.consecutive_failures = 0
        flusher_metrics.pass_succeeded(pass_started, self.last_success)
        return report

    async def _index_older_work(self) -> None:
        """The upgrade from SCAN: an older release's work put into the index, once per Redis
        (the store checks), tried by the first pass of each process until it succeeds."""
        if self._indexed:
            return
        try:
            await self._store.index_unindexed()
            self._indexed = True
        except CounterUnavailable as exc:  # a node is down: the next pass tries again
            log.warning("older work not indexed yet: %s", exc, extra={"error": str(exc)})

    async def _finish_leftovers(
        self,
        work: Work,
        held: set[str],
        failed: dict[str, BaseException | str],
        report: FlushReport,
    ) -> None:
        """Finish the batches frozen by an earlier pass (`failed` gets the nodes that could
        not be worked on)."""
        for batch, refs in sorted(work.batches.items()):
            # Ours, or left by a flusher whose lease ran out (dead, or stalled: then the
            # ledger keeps a late apply of its from counting twice). Of a batch over several
            # units, the part whose units this flusher holds: the ledger settles the rest.
            mine = sorted((ref for ref in refs if ref.unit in held), key=_by_name)
            if not mine:
                continue
            try:
                await self._finish(batch, mine, None, report)
            except CounterUnavailable as exc:
                for unit in {ref.unit for ref in mine}:
                    failed[work.homes[unit]] = exc
                continue
            REPLAYED_BATCHES.inc()

    async def _flush_units(
        self, unit_ids: Sequence[str], report: FlushReport
    ) -> tuple[set[str], set[str]]:
        """Freeze and apply the pending deltas of `unit_ids` (all on one node): up to
        UNITS_PER_BATCH units a batch, one transaction and one ledger row each. The units
        frozen, and those whose learned titles wait."""
        # Many units a batch: 10,000 small sites are a few transactions, not 10,000. A unit
        # whose Redis data was lost and refilled meanwhile still drops only its own deltas
        # (_apply retries the others under a new batch id).
        batches: dict[str, str] = {}
        for start in range(0, len(unit_ids), UNITS_PER_BATCH):
            batch = self._new_batch_id()
            batches.update((unit, batch) for unit in unit_ids[start : start + UNITS_PER_BATCH])
        timeout = FSYNC_WAIT_MS if self._wait_fsync else None
        snapshots, fsynced = await self._store.snapshot(batches, timeout)
        if fsynced is False:
            raise FlushDeferred("Redis did not confirm the snapshot on disk in time")
        if fsynced is None and self._wait_fsync and not self._warned_no_fsync:
            self._warned_no_fsync = True
            log.warning(
                "redis cannot confirm fsync (AOF off or Redis < 7.2): a Redis crash "
                "right after a flush may replay up to one second of hits"
            )
        frozen: dict[str, tuple[list[SnapshotRef], dict[str, str | None]]] = {}
        for snap in snapshots:
            if snap.refs:
                refs, generations = frozen.setdefault(batches[snap.unit], ([], {}))
                refs.extend(snap.refs)
                generations[snap.unit] = snap.generation
        for batch, (refs, generations) in frozen.items():
            await self._finish(batch, refs, generations, report)
        return set(batches), {snap.unit for snap in snapshots if snap.titles}

    def passes_check(self) -> str:
        """ "ok", or why not ready: UNREADY_AFTER_FAILED_PASSES or more passes failed in a row."""
        if self.consecutive_failures < UNREADY_AFTER_FAILED_PASSES:
            return "ok"
        return (
            f"{self.consecutive_failures} flush passes in a row failed, the last: {self.last_error}"
        )

    async def _take_share(self, wanted: set[str]) -> set[str]:
        """Take or renew leases on this flusher's share of the `wanted` units, and give back
        the leases it holds beyond it (another flusher started): the units are shared out
        among the flushers alive by rendezvous hashing, which every flusher computes alike
        and which moves few units when one comes or goes."""
        try:
            alive = await self._store.leases.alive(self.owner, self._lease_ms)
        except CounterUnavailable as exc:
            # The node holding the heartbeats is down: share out as last seen (the leases
            # still keep two flushers off one unit; the ledger keeps the counts exact).
            log.warning("flusher heartbeat failed: %s", exc, extra={"error": str(exc)})
            alive = list(self._alive)
        else:
            self._alive = list(alive)
        if self.owner not in alive:
            alive.append(self.owner)
        mine = {unit for unit in wanted if assigned_flusher(unit, alive) == self.owner}
        given_back = sorted(u for u in self._leased if assigned_flusher(u, alive) != self.owner)
        if given_back:
            await self._store.leases.release(given_back, self.owner)
        held = await self._store.leases.take(sorted(mine), self.owner, self._lease_ms)
        self._leased = (self._leased - set(given_back) - mine) | held
        return held

    async def _settle_baselines(self) -> None:
        # A baseline change is committed in Postgres with its Redis deltas queued beside it;
        # the api applies them right away. If it died first, they wait here: every pass
        # applies what is queued (each chunk once, whoever gets there first).
        sites = await self._baselines.outbox_sites()
        if not sites:
            return
        importer = baselines.Importer(self._baselines, self._baseline_store, default_max_pages=0)
        for site in sites:
            try:
                left = await importer.settle(site)
            except CounterUnavailable as exc:  # a node down: they stay queued for the next pass
                log.warning("queued baseline deltas of %s wait: %s", site, exc)
                continue
            log.info("queued baseline deltas applied", extra={"site": site, "left": left})

    async def _finish(
        self,
        batch: str,
        refs: Sequence[SnapshotRef],
        generations: Mapping[str, str | None] | None,
        report: FlushReport,
    ) -> None:
        units = sorted({ref.unit for ref in refs})
        tally: dict[str, int] = {}  # hits read per unit (what a unit dropped alone had)
        # (FLUSH_CHUNK_ROWS and _with_visitors looked up per batch: tests patch them)
        chunks = batchrows.read_chunks(
            self._store, refs, self._with_visitors, FLUSH_CHUNK_ROWS, tally
        )
        async with contextlib.aclosing(chunks):
            # The first chunk is read before the transaction: none at all means the keys are
            # gone, and whoever deleted them had committed their batch. A batch of one chunk is
            # thus read whole before Postgres sees any of it; a larger one streams in.
            first = await anext(chunks, None)
            if first is None:
                await self._store.delete(refs)  # index entries of keys that are gone, if any
                return
            async with contextlib.aclosing(batchrows.chained(first, chunks)) as stream:
                sites = sorted({ref.site for ref in refs})
                await self._apply(batch, refs, sites, units, generations, stream, tally, report)

    async def _with_visitors(
        self, rows: list[tuple[str, str, str]], hits: list[int]
    ) -> list[db_ledger.DailyRow]:
        # Distinct visitors are estimates, not deltas: read them now (they include every hit
        # of this batch) and let Postgres keep the larger of old and new.
        _, estimates = await self._store.visitor_estimates((), rows)
        return [
            (site, page, day, n, v)
            for (site, page, day), n, v in zip(rows, hits, estimates, strict=True)
        ]

    async def _apply(
        self,
        batch: str,
        refs: Sequence[SnapshotRef],
        sites: Sequence[str],
        units: Sequence[str],
        generations: Mapping[str, str | None] | None,
        chunks: AsyncGenerator[list[db_ledger.DailyRow]],
        tally: Mapping[str, int],
        report: FlushReport,
    ) -> None:
        if generations is None:
            generations = await self._store.generations(units)
        checks = RedisBatchChecks(self._store, generations)
        rows = db_ledger.BatchStream(sites, chunks)
        # The ledger records the snapshots by name.
        names = [ref.name for ref in refs]
        try:
            outcome = await self._ledger.apply_batch(batch, names, rows, checks)
        except db_errors.GenerationChanged:
            # Only the units Redis lost and refilled meanwhile drop their deltas (lost with
            # Redis: applying them would put Postgres ahead of the live numbers); the others'
            # go again under a new batch id.
            stale = checks.stale or set(units)
            lost = [ref for ref in refs if ref.unit in stale]
            lost_hits = sum(tally.get(unit, 0) for unit in stale)
            log.error(
                "batch %s: units dropped, Redis lost and refilled them meanwhile",
                batch,
                extra={"batch": batch, "hits": lost_hits, "units": sorted(stale)},
            )
            await self._store.delete(lost)
            report.discarded_hits += lost_hits
            DISCARDED_HITS.inc(lost_hits)
            rest = [ref for ref in refs if ref.unit not in stale]
            if rest:
                new_batch = self._new_batch_id()
                moved = [m for ref in rest if (m := await self._store.rehome(ref, new_batch))]
                kept = {unit: gen for unit, gen in generations.items() if unit not in stale}
                if moved:
                    await self._finish(new_batch, moved, kept, report)
            return
        if isinstance(outcome, db_ledger.Applied):
            await self._store.delete(refs)
            report.batches += 1
            report.units += len(units)
            report.hits += rows.hits
            report.rows += rows.rows
            FLUSHED_BATCHES.inc()
            FLUSHED_HITS.inc(rows.hits)
            FLUSHED_ROWS.inc(rows.rows)
            log.info("batch applied", extra={"batch": batch, "hits": rows.hits, "rows": rows.rows})
            return
        await self._settle_applied(batch, refs, outcome.keys, report)

    async def _settle_applied(
        self, batch: str, refs: Sequence[SnapshotRef], done: Sequence[str], report: FlushReport
    ) -> None:
        # The ledger has this batch id: delete exactly the snapshots it covered (`done`: their
        # names). A snapshot it did not cover (another flusher took over a batch still being
        # frozen) moves to a new batch id instead of being lost.
        covered = set(done)
        await self._store.delete([ref for ref in refs if ref.name in covered])
        rest = [ref for ref in refs if ref.name not in covered]
        if not rest:
            return
        new_batch = self._new_batch_id()
        moved = []
        for ref in rest:
            new_ref = await self._store.rehome(ref, new_batch)
            if new_ref is not None:
                moved.append(new_ref)
        log.warning("batch %s partly applied elsewhere; rest moves to %s", batch, new_batch)
        if moved:
            await self._finish(new_batch, moved, None, report)

    async def run(self, stop: asyncio.Event, *, grace_s: float = 30.0) -> None:
        """Flush every interval until `stop` is set; then finish and flush once more."""
        while not stop.is_set():
            if await self._pass_ok():
                delay = self._interval_s
            else:
                delay = min(
                    self._interval_s * 2**self.consecutive_failures,
                    max(MAX_BACKOFF_S, self._interval_s),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        try:
            await asyncio.wait_for(self._pass_ok(), grace_s)
        except TimeoutError:
            log.error("final flush did not finish within %.0f s; its snapshot stays", grace_s)
        await self.release_leases()

    async def release_leases(self) -> None:
        """Give up this flusher's leases, so that others take its sites over at once."""
        leased, self._leased = sorted(self._leased), set()
        try:
            await self._store.leases.alive(self.owner, -1)
            await self._store.leases.release(leased, self.owner)
        except CounterUnavailable as exc:
            log.warning("leases not released (they run out by themselves): %s", exc)

    async def _pass_ok(self) -> bool:
        began = time.perf_counter()  # metrics: pass duration
        try:
            report = await self.flush_once()
        except (
            CounterUnavailable,
            db_errors.DatabaseUnavailable,
            FlushDeferred,
        ) as exc:
            self._failed(exc, began)
            log.warning("flush failed, will retry: %s", exc, extra={"error": str(exc)})
            return False
        except Exception as exc:
            # A bug or an error we did not foresee: the snapshot stays in Redis and the next
            # pass retries it; the loop (and the hits it moves) must not die of it.
            self._failed(exc, began)
            log.exception("flush failed unexpectedly, will retry", extra={"error": str(exc)})
            return False
        flusher_metrics.CONSECUTIVE_FAILURES.set(0)
        if report.batches:
            log.debug("flush pass", extra={"batches": report.batches, "hits": report.hits})
        return True

    def _failed(self, exc: BaseException, began: float) -> None:
        self.consecutive_failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        FLUSH_FAILURES.inc()
        flusher_metrics.CONSECUTIVE_FAILURES.set(self.consecutive_failures)
        flusher_metrics.pass_failed(exc, time.perf_counter() - began)


def _by_name(ref: SnapshotRef) -> str:
    """Sort key: snapshots in the order of their names (as the ledger lists them)."""
    return ref.name
