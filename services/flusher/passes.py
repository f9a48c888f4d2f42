"""What a flush pass is made of, apart from the loop that makes one (worker.py): its report,
its deliberate stop, batch ids, which flusher a unit belongs to, and when failed nodes fail
the whole pass."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.counter.errors import CounterUnavailable


class FlushDeferred(Exception):
    """The pass stopped early on purpose; the snapshot stays and is finished next pass."""


@dataclass
class FlushReport:
    """What one pass did."""

    batches: int = 0
    units: int = 0  # units whose deltas those batches carried
    hits: int = 0
    rows: int = 0
    discarded_hits: int = 0
    titles: int = 0  # learned titles moved to Postgres


def batch_id(owner: str, seq: int, now_s: float) -> str:
    """A unique batch id that also tells its age and owner: `<unix ms>-<owner>-<seq>`."""
    return f"{int(now_s * 1000):013d}-{owner}-{seq}"


def assigned_flusher(unit: str, alive: Sequence[str]) -> str:
    """The flusher (among the `alive` owner tokens) whose share `unit` is: the highest
    hash of owner and unit (rendezvous hashing)."""
    return max(
        alive,
        key=lambda owner: hashlib.blake2b(f"{owner}/{unit}".encode(), digest_size=8).digest(),
    )


def raise_if_every_node_failed(nodes: Sequence[str], failed: Mapping[str, object]) -> None:
    """Fail the pass when no node's part of it succeeded: with one Redis, as its own error
    (FlushDeferred, CounterUnavailable), as before nodes were told apart; FlushDeferred also
    when every node deferred (no replica confirmed its snapshot: nothing is wrong, only
    unconfirmed)."""
    if not failed or set(nodes) - set(failed):
        return
    errors = [e for e in failed.values() if isinstance(e, BaseException)]
    if len(failed) == 1 and errors:
        raise errors[0]
    if len(errors) == len(failed) and all(isinstance(e, FlushDeferred) for e in errors):
        raise FlushDeferred(f"every Redis node deferred its snapshots: {dict(failed)}")
    raise CounterUnavailable(f"flush failed on every Redis node: {dict(failed)}")
