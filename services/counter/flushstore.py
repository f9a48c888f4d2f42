"""What the flusher calls in Redis: find work, leases, snapshots (typed references, never
key strings), reading and dropping them, visitor estimates and load generations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.counter import calls, client, keys, scripts
from services.counter.client import Client
from services.counter.scripts import Call
from services.counter.stats import add_day_parts
from services.counter.units import Units

SNAPSHOT_SCAN_COUNT = 5000
WORK_SCAN_COUNT = 1000
VISITOR_READ_CHUNK = 1000
TITLE_CHUNK = 1000
# How long a snapshot waits for its replicas when the flusher does not wait for the local fsync.
REPLICA_WAIT_MS = 2000

# One row of a snapshot: (site, page, local day, hits). A plain tuple: a batch reads
# millions of them.
SnapshotRow = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """A pending shard of a unit frozen under a batch id."""

    unit: str
    shard: int
    batch_id: str

    @property
    def name(self) -> str:
        """The snapshot's name in the Postgres ledger (its Redis key: batches left by an
        earlier release still match their ledger rows)."""
        return keys.snapshot_key(self.unit, self.shard, self.batch_id)

    @property
    def site(self) -> str:
        """The site the snapshot's unit belongs to."""
        return keys.site_of(self.unit)

    def in_batch(self, batch_id: str) -> SnapshotRef:
        """The same shard of the same unit under another batch id."""
        return SnapshotRef(self.unit, self.shard, batch_id)

    @staticmethod
    def parse(name: str) -> SnapshotRef | None:
        """The reference a ledger name stands for, or None when it names no snapshot."""
        parsed = keys.parse_snapshot_key(name)
        return None if parsed is None else SnapshotRef(*parsed)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Pending shards of one unit frozen under a batch id, and the generation they belong to."""

    unit: str
    generation: str | None
    refs: list[SnapshotRef]


class FlushStore:
    """The flusher's view of Redis; Redis errors raise CounterUnavailable. The store never
    closes the client it is given (only the node clients it opened itself)."""

    def __init__(self, redis: Client, units: Units, *, wait_replicas: int = 0) -> None:
        self._redis = redis
        self._units = units
        # Replicas each snapshot must reach before its batch goes to Postgres (0: none).
        self._wait_replicas = wait_replicas
        self._nodes = client.NodeClients(redis) if isinstance(redis, RedisCluster) else None

    async def close(self) -> None:
        """Close the Cluster node clients this store opened."""
        if self._nodes is not None:
            await self._nodes.close()

    async def find_work(self) -> tuple[set[str], dict[str, list[SnapshotRef]], set[str]]:
        """Units with pending deltas, snapshots left in Redis grouped by batch id, and units
        with titles learned from hits (all found by one SCAN)."""
        units: set[str] = set()
        batches: dict[str, list[SnapshotRef]] = {}
        title_units: set[str] = set()
        with client.translated():
            async for key in self._redis.scan_iter(
                match=keys.WORK_KEYS_PATTERN, count=WORK_SCAN_COUNT
            ):
                pending_unit = keys.parse_pending_key(key)
                if pending_unit is not None:
                    units.add(pending_unit)
                    continue
                ref = SnapshotRef.parse(key)
                if ref is not None:
                    batches.setdefault(ref.batch_id, []).append(ref)
                    continue
                titles_unit = keys.parse_titles_key(key)
                if titles_unit is not None:
                    title_units.add(titles_unit)
        return units, batches, title_units

    @staticmethod
    def site_of(unit: str) -> str:
        """The site a unit belongs to."""
        return keys.site_of(unit)

    async def learned_titles(self, unit: str) -> AsyncIterator[dict[str, str]]:
        """The titles learned from the unit's hits (page -> the last title seen), in chunks
        of about TITLE_CHUNK pages (HSCAN)."""
        chunk: dict[str, str] = {}
        with client.translated():
            async for page, title in self._redis.hscan_iter(
                keys.titles_key(unit), count=TITLE_CHUNK
            ):
                chunk[page] = title
                if len(chunk) >= TITLE_CHUNK:
                    yield chunk
                    chunk = {}
        if chunk:
            yield chunk

    async def forget_titles(self, unit: str, moved: Mapping[str, str]) -> int:
        """Drop learned titles that Postgres now has, each only if unchanged since it was read;
        how many were dropped."""
        argv = [value for page, title in moved.items() for value in (page, title)]
        removed = await scripts.call(
            self._redis, scripts.FORGET_TITLES, (keys.titles_key(unit),), argv
        )
        return int(removed)

    async def flushers_alive(self, owner: str, lease_ms: int) -> list[str]:
        """Record that flusher `owner` is alive; the flushers alive within the last
        `lease_ms` (this one included). `lease_ms` -1: it is leaving."""
        alive = await scripts.call(
            self._redis, scripts.FLUSHERS, (keys.FLUSHERS_KEY,), (owner, lease_ms)
        )
        return [str(o) for o in alive]

    async def take_leases(self, unit_ids: Sequence[str], owner: str, lease_ms: int) -> set[str]:
        """Take or renew the flush lease of each unit; the units whose lease `owner` holds."""
        call_list: list[Call] = [
            (scripts.LEASE, 1, [keys.lease_key(u), owner, lease_ms]) for u in unit_ids
        ]
        results = await scripts.run(self._redis, call_list)
        return {unit for unit, result in zip(unit_ids, results, strict=True) if result[0] == 1}

    async def release_leases(self, unit_ids: Sequence[str], owner: str) -> None:
        """Give up the flush leases `owner` holds among `unit_ids`."""
        await scripts.run(
            self._redis, [(scripts.RELEASE, 1, [keys.lease_key(u), owner]) for u in unit_ids]
        )

    async def snapshot(
        self, batches: Mapping[str, str], fsync_timeout_ms: int | None
    ) -> tuple[list[Snapshot], bool | None]:
        """Freeze the non-empty pending shards of each unit in `batches` (unit -> batch id)
        under its batch id, in one pipeline.

        With `fsync_timeout_ms`, also wait (WAITAOF) until the moves are in Redis' AOF on disk,
        so a Redis crash cannot roll them back after a batch reached Postgres; the second
        value says whether that was confirmed (None: the server cannot confirm it). With
        replicas to wait for (`wait_replicas`), also until that many replicas have the moves
        (WAITAOF numreplicas, and WAIT), so a failover cannot bring back a snapshot whose
        batch reached Postgres.
        """
        unit_ids = list(batches)
        call_list: list[Call] = []
        targets: list[list[SnapshotRef]] = []
        for unit, batch_id in batches.items():
            unit_targets = [
                SnapshotRef(unit, shard, batch_id) for shard in range(keys.PENDING_SHARDS)
            ]
            argv = [keys.site_key(unit)]
            for shard, target in enumerate(unit_targets):
                argv.extend((keys.pending_key(unit, shard), target.name))
            call_list.append((scripts.SNAPSHOT, len(argv), argv))
            targets.append(unit_targets)
        wait = self._wait(fsync_timeout_ms)
        with client.translated():
            if self._nodes is not None and wait is not None:
                results, fsynced = await self._snapshot_per_node(
                    self._nodes, unit_ids, call_list, wait
                )
            else:
                results, fsynced = await scripts.run_scripts(self._redis, call_list, wait)
        client.raise_failed(results)
        snapshots = [
            Snapshot(unit=unit, generation=result[0], refs=[unit_targets[i] for i in result[1:]])
            for unit, unit_targets, result in zip(unit_ids, targets, results, strict=True)
        ]
        return snapshots, fsynced

    def _wait(self, fsync_timeout_ms: int | None) -> scripts.Wait | None:
        """What the snapshot's pipeline waits for after it (None: nothing)."""
        if self._wait_replicas:
            timeout_ms = REPLICA_WAIT_MS if fsync_timeout_ms is None else fsync_timeout_ms
            local = fsync_timeout_ms is not None
            return scripts.Wait(timeout_ms, local=local, replicas=self._wait_replicas)
        return None if fsync_timeout_ms is None else scripts.Wait(fsync_timeout_ms)

    @staticmethod
    async def _snapshot_per_node(
        nodes: client.NodeClients,
        unit_ids: Sequence[str],
        call_list: Sequence[Call],
        wait: scripts.Wait,
    ) -> tuple[list[Any], bool | None]:
        # WAITAOF and WAIT wait for the writes of their own connection: on a Cluster, each
        # node's snapshots and their waits go down one pipeline (one connection) to that node.
        groups: dict[int, tuple[Redis, list[int]]] = {}
        for i, unit in enumerate(unit_ids):
            node = nodes.of(keys.site_key(unit))
            groups.setdefault(id(node), (node, []))[1].append(i)
        results: list[Any] = [None] * len(call_list)
        confirmations: list[bool | None] = []
        for node, indexes in groups.values():
            node_results, fsynced = await scripts.run_scripts(
                node, [call_list[i] for i in indexes], wait
            )
            for i, result in zip(indexes, node_results, strict=True):
                results[i] = result
            confirmations.append(fsynced)
        if False in confirmations:
            return results, False
        return results, None if None in confirmations else True

    async def read_snapshot(self, ref: SnapshotRef) -> AsyncIterator[SnapshotRow]:
        """The rows of a frozen snapshot, read in chunks (HSCAN)."""
        site = ref.site
        with client.translated():
            async for field, value in self._redis.hscan_iter(ref.name, count=SNAPSHOT_SCAN_COUNT):
                day, page = keys.split_pending_field(field)
                yield site, page, day, int(value)

    async def rehome(self, ref: SnapshotRef, batch_id: str) -> SnapshotRef | None:
        """Move a snapshot to another batch id; its new reference, or None when it is gone."""
        moved = ref.in_batch(batch_id)
        if await scripts.call(self._redis, scripts.REHOME, (ref.name, moved.name), ()):
            return moved
        return None

    async def delete(self, refs: Sequence[SnapshotRef]) -> None:
        """Drop snapshots whose batch is committed in Postgres."""
        if not refs:
            return
        with client.translated():
            async with self._redis.pipeline(transaction=False) as pipe:
                for ref in refs:
                    pipe.delete(ref.name)  # one key per command: keys may sit in different slots
                await pipe.execute()

    async def generation(self, unit: str) -> str | None:
        """The unit's load generation; it changes only when Redis lost the unit and it was
        refilled."""
        return await self._units.generation(unit)

    @property
    def split(self) -> bool:
        """Whether sites are split over several units (their daily views then go by page)."""
        return self._units.count > 1

    async def prune_days(self, unit_ids: Sequence[str], oldest_day: str) -> dict[str, list[str]]:
        """Drop the units' days before `oldest_day`; the units whose days hash is not exact
        yet (loaded by an earlier release), by site."""
        answers = await scripts.run(
            self._redis, [calls.prune_days_call(unit, oldest_day) for unit in unit_ids]
        )
        unfilled: dict[str, list[str]] = {}
        for unit, exact in zip(unit_ids, answers, strict=True):
            if not exact:
                unfilled.setdefault(keys.site_of(unit), []).append(unit)
        return unfilled

    async def fill_days(
        self, site: str, generations: Mapping[str, str], rows: Iterable[tuple[str, str, int]]
    ) -> list[str]:
        """Make the days hashes of the site's units in `generations` (unit -> generation read
        before Postgres' daily `rows` were) exact: Postgres' part plus pending deltas; the
        units this wrote. Call only when none of them has a snapshot in flight."""
        parts: dict[str, dict[str, int]] = {}
        add_day_parts(parts, self._units, site, rows)
        unit_ids = sorted(generations)
        answers = await scripts.run(
            self._redis,
            [calls.fill_days_call(u, generations[u], parts.get(u, {})) for u in unit_ids],
        )
        return [unit for unit, filled in zip(unit_ids, answers, strict=True) if filled]

    async def visitor_estimates(
        self, site_days: Sequence[tuple[str, str]], page_days: Sequence[tuple[str, str, str]]
    ) -> tuple[list[int], list[int]]:
        """Distinct-visitor estimates of (site, day) and (site, page, day) buckets, in order."""
        # One script call per unit and chunk: a unit's sketches share its Cluster slot.
        split = self._units.count > 1
        wanted: list[tuple[str, str]] = []
        if not split:
            wanted += [(site, keys.site_visitors_key(site, day)) for site, day in site_days]
        for site, page, day in page_days:
            unit = self._units.holding(site, page)
            wanted.append((unit, keys.page_visitors_key(unit, day, page)))
        by_unit: dict[str, list[int]] = {}
        for i, (unit, _) in enumerate(wanted):
            by_unit.setdefault(unit, []).append(i)
        call_list: list[Call] = []
        slots: list[list[int]] = []
        for indexes in by_unit.values():
            for start in range(0, len(indexes), VISITOR_READ_CHUNK):
                chunk = indexes[start : start + VISITOR_READ_CHUNK]
                call_list.append((scripts.VISITORS, len(chunk), [wanted[i][1] for i in chunk]))
                slots.append(chunk)
        values = [0] * len(wanted)
        for chunk, result in zip(slots, await scripts.run(self._redis, call_list), strict=True):
            for i, value in zip(chunk, result, strict=True):
                values[i] = int(value)
        if not split:
            return values[: len(site_days)], values[len(site_days) :]
        # Split over units: a site's visitors are the union of its units' sketches.
        site_values = [
            await self._units.site_visitors(site, day, cached=False) for site, day in site_days
        ]
        return site_values, values
