"""Snapshot references and their names in the Postgres ledger."""

from __future__ import annotations

import pytest

from services.counter import keys
from services.counter.snapshots import SnapshotRef

pytestmark = pytest.mark.unit

BATCH = "0001700000000-ab12cd34-7"


def test_the_name_is_the_key_earlier_releases_recorded_in_the_ledger() -> None:
    ref = SnapshotRef("quan11~3", 5, BATCH)
    assert ref.name == "{vc:quan11~3}:snap:5:" + BATCH
    assert ref.name == keys.snapshot_key("quan11~3", 5, BATCH)
    assert ref.site == "quan11"


@pytest.mark.parametrize("unit", ["quan11", "quan11~15", "my_site-2"])
def test_a_name_parses_back_to_its_reference(unit: str) -> None:
    for shard in range(keys.PENDING_SHARDS):
        ref = SnapshotRef(unit, shard, BATCH)
        assert SnapshotRef.parse(ref.name) == ref


@pytest.mark.parametrize(
    "name", ["{vc:quan11}:pend:1", "{vc:quan11}:site", "{vc:quan11}:snap:x:b", "snapshot"]
)
def test_a_name_of_no_snapshot_parses_to_none(name: str) -> None:
    assert SnapshotRef.parse(name) is None


def test_moving_to_another_batch_keeps_unit_and_shard() -> None:
    moved = SnapshotRef("quan11", 2, BATCH).in_batch("later")
    assert moved == SnapshotRef("quan11", 2, "later")
