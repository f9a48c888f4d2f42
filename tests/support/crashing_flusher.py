"""`viewcounter flusher`, unchanged, that SIGKILLs itself the first time it reaches a phase.

Run as `python -m tests.support.crashing_flusher PHASE`. It wraps three methods of the real
flusher's collaborators (each wrapper calls the real method) and then runs the real command
(`services.cli.main.main(["flusher"])`), so the crash lands at an exact point of the protocol
without any hook in production code:

- `after_snapshot`: the pending shards are frozen under a batch id (RENAME) and WAITAOF
  confirmed them on disk; nothing of the batch is in Postgres.
- `in_transaction`: inside the batch's transaction, after the ledger INSERT and every row
  write, just before COMMIT (when the flusher re-checks the site's generation).
- `after_commit`: COMMIT returned; the snapshot is still in Redis (the delete not sent).
- `mid_delete`: COMMIT returned; the first of the batch's snapshot keys is deleted, the others
  are not (only a batch of two keys or more triggers it).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from services.cli import main as cli
from services.counter.flushstore import FlushStore, Snapshot, SnapshotRef
from services.db import ledger as db_ledger

PHASES = ("after_snapshot", "in_transaction", "after_commit", "mid_delete")


def crash() -> None:
    """Die the way a crash does: no cleanup, no lease release, no final flush."""
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class CheckThenCrash:
    """The flusher's checks, dying once the last one (just before COMMIT) has answered."""

    def __init__(self, checks: db_ledger.BatchChecks) -> None:
        self._checks = checks

    async def site_visitors(self, site_days: Sequence[tuple[str, str]]) -> Sequence[int]:
        return await self._checks.site_visitors(site_days)

    async def still_current(self) -> bool:
        await self._checks.still_current()
        crash()
        return False  # never reached


def install(phase: str) -> None:
    """Wrap the methods whose completion marks `phase`."""
    if phase not in PHASES:
        raise SystemExit(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
    store_cls = FlushStore
    snapshot = store_cls.snapshot
    delete = store_cls.delete
    apply_batch = db_ledger.Ledger.apply_batch

    async def snapshot_then_crash(
        self: FlushStore, batches: Mapping[str, str], fsync_timeout_ms: int | None
    ) -> tuple[list[Snapshot], bool | None]:
        result = await snapshot(self, batches, fsync_timeout_ms)
        if any(snap.refs for snap in result[0]):
            crash()
        return result

    async def apply_then_crash_before_commit(
        self: db_ledger.Ledger,
        batch_id: str,
        snapshot_keys: Sequence[str],
        rows: db_ledger.BatchStream,
        checks: db_ledger.BatchChecks,
    ) -> Any:
        return await apply_batch(self, batch_id, snapshot_keys, rows, CheckThenCrash(checks))

    async def delete_with_crash(self: FlushStore, refs: Sequence[SnapshotRef]) -> None:
        if phase == "after_commit" and refs:
            crash()
        if phase == "mid_delete" and len(refs) >= 2:
            await delete(self, refs[:1])
            crash()
        await delete(self, refs)

    if phase == "after_snapshot":
        store_cls.snapshot = snapshot_then_crash  # type: ignore[method-assign]
    elif phase == "in_transaction":
        db_ledger.Ledger.apply_batch = apply_then_crash_before_commit  # type: ignore[method-assign]
    else:
        store_cls.delete = delete_with_crash  # type: ignore[method-assign]


if __name__ == "__main__":
    install(sys.argv[1])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(cli.main(["flusher"]))
