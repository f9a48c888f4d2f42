"""What the flusher calls in Redis: find work (through the work index, per node), leases
(`leases.py`), snapshots (typed references, never key strings), reading and dropping them, visitor
estimates and load generations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.counter import calls, client, keys, scripts
from services.counter.client import Client
from services.counter.errors import CounterUnavailable
from services.counter.leases import Leases
from services.counter.scripts import Call
from services.counter.snapshots import Snapshot, SnapshotRef, SnapshotRow, Work
from services.counter.stats import add_day_parts
from services.counter.units import Units

log = logging.getLogger("viewcounter.flusher")

SNAPSHOT_SCAN_COUNT = 5000
SNAPSHOT_READ_GROUP = 500  # snapshots whose first HSCAN page goes in one pipeline
WORK_SCAN_COUNT = 1000  # the upgrade's one SCAN for work an older release left unindexed
VISITOR_READ_CHUNK = 1000
TITLE_CHUNK = 1000
# How long a snapshot waits for its replicas when the flusher does not wait for the local fsync.
REPLICA_WAIT_MS = 2000

class FlushStore:
    """The flusher's view of Redis; Redis errors raise CounterUnavailable. The store never
    closes the client it is given (only the node clients it opened itself)."""

    def __init__(self, redis: Client, units: Units, *, wait_replicas: int = 0) -> None:
        self._redis = redis
        self._units = units
        # Replicas each snapshot must reach before its batch goes to Postgres (0: none).
        self._wait_replicas = wait_replicas
        self._nodes = client.NodeClients(redis) if isinstance(redis, RedisCluster) else None
        self._name = _node_name(redis)  # a single Redis' name in metrics and logs
        self.leases = Leases(redis, units)

    async def close(self) -> None:
        """Close the Cluster node clients this store opened."""
        if self._nodes is not None:
            await self._nodes.close()

    async def _index_nodes(self) -> list[tuple[str, Client, list[int]]]:
        """(node name, its client, the index slots it holds) of each Redis to read."""
        if self._nodes is None:
            return [(self._name, self._redis, [0])]
        return [(name, node, slots) for name, node, slots in await self._nodes.primaries()]

    @staticmethod
    def _index_call(index_slots: Sequence[int], mode: str) -> Call:
        key_list = [k for s in index_slots for k in (keys.work_key(s), keys.snaps_key(s))]
        return (scripts.WORK, 0, [mode, *key_list])  # keys as ARGV: see work.lua

    async def _read_index(self, mode: str) -> list[tuple[str, Any]]:
        """Each node's answer of work.lua (`mode`), or the error reading it: a node that is
        down or slow costs only its own answer."""
        nodes = await self._index_nodes()

        async def read(redis: Client, index_slots: list[int]) -> Any:
            results, _ = await scripts.run_scripts(redis, [self._index_call(index_slots, mode)])
            return client.raise_failed(results)[0]

        answers = await asyncio.gather(
            *(read(redis, slots) for _, redis, slots in nodes), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(
                answer, (*client.CLIENT_ERRORS, CounterUnavailable)
            ):
                raise answer  # cancellation, or a bug: not a Redis failure
        return [(name, answer) for (name, _, _), answer in zip(nodes, answers, strict=True)]

    async def find_work(self) -> Work:
        """The work index of every node: units with pending deltas or learned titles, and
        snapshots in flight (left by a crashed or concurrent flusher). Costs one script call
        per node and the entries it returns, whatever else Redis holds (never a SCAN)."""
        work = Work({}, {}, [], {}, {})
        with client.translated():
            answers = await self._read_index("list")
        for node, answer in answers:
            if isinstance(answer, BaseException):
                work.failed[node] = f"{type(answer).__name__}: {answer}"
                continue
            work.nodes.append(node)
            _, units, snaps = answer
            for i in range(0, len(units), 2):
                work.units[str(units[i])] = work.homes[str(units[i])] = node
            for i in range(0, len(snaps), 2):
                ref = SnapshotRef.parse(str(snaps[i]))
                if ref is not None:
                    work.batches.setdefault(ref.batch_id, []).append(ref)
                    work.homes[ref.unit] = node
        return work

    async def oldest_work(self) -> dict[str, float | None]:
        """Per node, the age in seconds (by Redis' clock) of its oldest unflushed unit: the
        earliest first-dirty time in its work and snapshots indexes (0 when both are empty;
        None when the node could not be read). Read from Redis alone, not from any
        flusher's bookkeeping."""
        ages: dict[str, float | None] = {}
        with client.translated():
            answers = await self._read_index("oldest")
        for node, answer in answers:
            if isinstance(answer, BaseException):
                ages[node] = None
                continue
            now_ms, oldest = answer[0], answer[1] if len(answer) > 1 else None
            ages[node] = 0.0 if not oldest else max(0.0, (int(now_ms) - int(oldest)) / 1000)
        return ages

    async def index_unindexed(self) -> int:
        """Once per Redis: put work an older release left (pending shards, learned titles
        and snapshots, which it found by SCAN) into the work index, by one SCAN of the
        keyspace (every primary); then record that it was done. How many entries were added
        (0 when it was done already)."""
        with client.translated():
            if await self._redis.exists(keys.WORK_INDEXED_KEY):
                return 0
            found: dict[str, list[str]] = {}
            async for key in self._redis.scan_iter(
                match=keys.WORK_KEYS_PATTERN, count=WORK_SCAN_COUNT
            ):
                unit = keys.parse_pending_key(key) or keys.parse_titles_key(key)
                if unit is not None:
                    found.setdefault(unit, [])
                    continue
                ref = SnapshotRef.parse(key)
                if ref is not None:
                    found.setdefault(ref.unit, []).append(key)
        call_list: list[Call] = []
        for unit, snap_keys in sorted(found.items()):
            work_key, snaps_key = keys.unit_work_keys(unit, self._units.per_slot)
            key_list = [work_key, snaps_key, keys.titles_key(unit)]
            key_list += [keys.pending_key(unit, shard) for shard in range(keys.PENDING_SHARDS)]
            key_list += snap_keys
            call_list.append((scripts.REINDEX, len(key_list), [*key_list, unit]))
        added = sum(int(n) for n in await scripts.run(self._redis, call_list))
        with client.translated():
            await self._redis.set(keys.WORK_INDEXED_KEY, 1)
        if added:
            log.info("work of an older release indexed", extra={"entries": added})
        return added

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
            argv = [
                keys.site_key(unit),
                *keys.unit_work_keys(unit, self._units.per_slot),
                keys.titles_key(unit),
            ]
            for shard, target in enumerate(unit_targets):
                argv.extend((keys.pending_key(unit, shard), target.name))
            call_list.append((scripts.SNAPSHOT, len(argv), [*argv, unit]))
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
            Snapshot(
                unit=unit,
                generation=result[0],
                refs=[unit_targets[i] for i in result[2:]],
                titles=result[1] == 1,
            )
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

    async def read_snapshots(
        self, refs: Sequence[SnapshotRef]
    ) -> AsyncIterator[tuple[SnapshotRef, list[SnapshotRow]]]:
        """The rows of frozen snapshots, a page (HSCAN) at a time: the first page of up to
        SNAPSHOT_READ_GROUP snapshots in one pipeline (a small snapshot is one page: many
        small units cost one round trip, not one each), then the rest of a large one."""
        for start in range(0, len(refs), SNAPSHOT_READ_GROUP):
            group = refs[start : start + SNAPSHOT_READ_GROUP]
            with client.translated():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for ref in group:
                        pipe.hscan(ref.name, 0, count=SNAPSHOT_SCAN_COUNT)
                    pages = await pipe.execute()
            for ref, (cursor, fields) in zip(group, pages, strict=True):
                yield ref, _rows(ref, cast(dict[str, str], fields))
                while int(cursor) != 0:
                    with client.translated():
                        cursor, fields = await self._redis.hscan(
                            ref.name, cursor, count=SNAPSHOT_SCAN_COUNT
                        )
                    yield ref, _rows(ref, cast(dict[str, str], fields))

    async def rehome(self, ref: SnapshotRef, batch_id: str) -> SnapshotRef | None:
        """Move a snapshot to another batch id; its new reference, or None when it is gone."""
        moved = ref.in_batch(batch_id)
        snaps_key = keys.unit_work_keys(ref.unit, self._units.per_slot)[1]
        if await scripts.call(self._redis, scripts.REHOME, (ref.name, moved.name, snaps_key), ()):
            return moved
        return None

    async def delete(self, refs: Sequence[SnapshotRef]) -> None:
        """Drop snapshots whose batch is committed in Postgres (or was discarded), with their
        entries in the snapshots index: one drop.lua call per unit (one slot)."""
        by_unit: dict[str, list[str]] = {}
        for ref in refs:
            by_unit.setdefault(ref.unit, []).append(ref.name)
        call_list: list[Call] = []
        for unit, names in by_unit.items():
            key_list = [keys.unit_work_keys(unit, self._units.per_slot)[1], *names]
            call_list.append((scripts.DROP, len(key_list), key_list))
        await scripts.run(self._redis, call_list)

    async def generation(self, unit: str) -> str | None:
        """The unit's load generation; it changes only when Redis lost the unit and it was
        refilled."""
        return await self._units.generation(unit)

    async def generations(self, unit_ids: Sequence[str]) -> dict[str, str | None]:
        """The load generations of many units, in one pipeline (on a Cluster, per node)."""
        if not unit_ids:
            return {}
        with client.translated():
            async with self._redis.pipeline(transaction=False) as pipe:
                for unit in unit_ids:
                    pipe.hget(keys.site_key(unit), keys.SITE_GEN)
                answers = await pipe.execute()
        return {unit: cast(str | None, gen) for unit, gen in zip(unit_ids, answers, strict=True)}

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


def _node_name(redis: Client) -> str:
    """A single Redis' name (host:port, or its socket path) for metrics and logs."""
    if isinstance(redis, RedisCluster):
        return "cluster"
    kwargs = redis.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _rows(ref: SnapshotRef, fields: Mapping[str, str]) -> list[SnapshotRow]:
    """A snapshot's (site, page, day, hits) rows from a page of its fields."""
    site = ref.site
    rows: list[SnapshotRow] = []
    for field, value in fields.items():
        day, page = keys.split_pending_field(field)
        rows.append((site, page, day, int(value)))
    return rows
