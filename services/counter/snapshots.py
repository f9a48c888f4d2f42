"""The flusher's value types for what it finds in Redis: typed references to frozen pending
shards (never key strings), snapshots of a unit, and what the work index holds."""

from __future__ import annotations

from dataclasses import dataclass

from services.counter import keys

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
    """Pending shards of one unit frozen under a batch id, the generation they belong to, and
    whether learned titles of the unit wait to be moved."""

    unit: str
    generation: str | None
    refs: list[SnapshotRef]
    titles: bool = False


@dataclass
class Work:
    """What the work index holds, read node by node: units with pending deltas or learned
    titles (unit -> its node), snapshots in flight grouped by batch id, and the nodes whose
    index could not be read (node -> why)."""

    units: dict[str, str]
    batches: dict[str, list[SnapshotRef]]
    nodes: list[str]
    failed: dict[str, str]
    homes: dict[str, str]  # every unit found (with work or a snapshot) -> its node
