"""Full disks under load: Redis' append-only file, then Postgres' data directory, each on a
small tmpfs of its own that a filler file fills up while hits flow, and frees again.

Redis (AOF `everysec`, the compose default) refuses every write it cannot persist (MISCONF):
hits answer 503 `redis_persistence_failed` with nothing applied, the api's readiness and a
metric say why, and counting resumes by itself once space is freed, totals exact. Postgres
with a full disk refuses the flusher's writes (or PANICs when it cannot write its WAL: then it
is restarted, as an operator would): hits go on being counted in Redis and the api stays
ready, the flusher keeps its snapshot and reports not ready while its passes fail, and catches
up exactly once when space returns. Needs root (mount); fails under CI without it."""

from __future__ import annotations

import asyncio
import contextlib
import pwd
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.cli.localpostgres import PostgresProcess
from services.cli.localredis import RedisProcess
from services.cli.localservers import PG_SYSTEM_USER, free_port
from tests.support import chaos, disks
from tests.support.stack import (
    SITE,
    copy_template,
    create_migrated_template,
    make_settings,
    register_site,
    running_api,
    running_ops,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]
# Room for Redis' AOF before the filler takes the rest.
REDIS_FS = "16m"
# initdb (~40 MB), the template and the test's database, WAL segments of 16 MB.
POSTGRES_FS = "200m"
# pg_wal alone: its segments (16 MB each) as initdb and the migrations leave them, and room.
WAL_FS = "128m"
WAL_SWITCHES_MAX = 50
PERSISTENCE_FAILED = "redis_persistence_failed"
REFUSED_TO_SEE = 50  # refused hits seen before the checks made while the disk is full


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    """The value of an unlabelled metric in the api's /metrics (its metrics listener)."""
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_redis_aof_disk_full_refuses_hits_until_freed_then_counts_exactly(
    database_url: str, tmp_path: Path
) -> None:
    disks.require_root("a full disk under Redis' AOF")
    with disks.small_tmpfs(tmp_path / "redis-fs", REDIS_FS) as redis_fs:
        server = RedisProcess(
            redis_fs, port=free_port(), appendfsync="everysec", log_file=tmp_path / "redis.log"
        )
        server.start()
        try:
            settings = make_settings(server.url, database_url, flush_interval=0.1)
            async with running_api(settings) as client, running_ops(settings) as ops:
                await register_site(client)
                load = chaos.Load(client, SITE, pages=20, seed=21)
                flusher_log = tmp_path / "flusher.log"
                with chaos.sampled_with_flusher(settings, [load], flusher_log) as (sampler, fl):
                    async with load.flowing(clients=4):
                        await load.more_acked(300)
                        assert await _metric(ops, "viewcounter_redis_persistence_ok") == 1
                        filler = await asyncio.to_thread(disks.fill, redis_fs)
                        seen = load.refused
                        await chaos.until(
                            lambda: load.refused >= seen + REFUSED_TO_SEE, "hits refused"
                        )
                        ready = await ops.get("/readyz")
                        one = await client.post(f"/v1/sites/{SITE}/hits", json={"page": "x"})
                        ok_gauge = await _metric(ops, "viewcounter_redis_persistence_ok")
                        # Nothing refused was applied: the live total stands still while
                        # more hits are refused.
                        counts = f"/v1/sites/{SITE}/counts"
                        before = (await client.get(counts)).json()["site_views"]
                        acked_before, seen = load.acked_total, load.refused
                        await chaos.until(
                            lambda: load.refused >= seen + REFUSED_TO_SEE, "more hits refused"
                        )
                        after = (await client.get(counts)).json()["site_views"]
                        acked_while_full = load.acked_total - acked_before
                        await asyncio.to_thread(disks.free, filler)
                        await load.more_acked(300)  # counting resumes by itself
                        ready_again = await ops.get("/readyz")
                        ok_again = await _metric(ops, "viewcounter_redis_persistence_ok")
                    assert await chaos.stop_gracefully(fl) == 0
        finally:
            server.kill()

    not_applied = sum(load.not_applied.values())
    result = await chaos.final_report(
        "Redis AOF disk full (tmpfs 16m, everysec), then freed", database_url, [load], sampler,
        notes=f"{not_applied} hits answered 503 {PERSISTENCE_FAILED} (none applied)",
    )  # fmt: skip
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["redis_persistence"].startswith(
        f"failed: {PERSISTENCE_FAILED}"
    ), ready.text
    assert one.status_code == 503 and one.json()["error"]["code"] == PERSISTENCE_FAILED, one.text
    assert ok_gauge == 0
    assert before == after and acked_while_full == 0
    assert ready_again.status_code == 200, ready_again.text
    assert ok_again == 1
    # Every 503 was a MISCONF refusal (nothing applied): Postgres holds exactly what was
    # acknowledged, not merely between acknowledged and acknowledged + unknown.
    assert load.not_applied == load.unknown
    result.assert_exact()
    assert result.in_postgres == result.acknowledged


@contextlib.contextmanager
def _postgres_on_small_fs(where: str, tmp_path: Path) -> Iterator[tuple[PostgresProcess, Path]]:
    """A Postgres whose data directory ("data") or only its WAL ("wal", pg_wal a symlink, as
    `initdb --waldir` makes it) lives on a small tmpfs: (server, that filesystem). Not
    started; fsync on: a PANIC must not lose a commit the flusher saw (it then deletes its
    snapshot)."""
    fs = tmp_path / f"pg-{where}-fs"
    if where == "data":
        with disks.small_tmpfs(fs, POSTGRES_FS):
            yield PostgresProcess(fs / "pgdata", fsync=True, log_file=tmp_path / "pg.log"), fs
        return
    data_dir = tmp_path / "pgdata"
    server = PostgresProcess(data_dir, fsync=True, log_file=tmp_path / "pg.log")
    server.start()  # initdb
    server.stop()
    owner = pwd.getpwnam(PG_SYSTEM_USER)
    with disks.small_tmpfs(fs, WAL_FS, uid=owner.pw_uid, gid=owner.pw_gid):
        wal = data_dir / "pg_wal"
        subprocess.run(["cp", "-a", f"{wal}/.", str(fs)], check=True)
        shutil.rmtree(wal)
        wal.symlink_to(fs)
        yield server, fs


async def _switch_wal_until_panic(server: PostgresProcess, database_url: str) -> int:
    """Ask for new WAL segments (pg_switch_wal) until Postgres PANICs for want of space to
    create one (or it is down); the switches asked for."""
    for switches in range(1, WAL_SWITCHES_MAX + 1):
        if "PANIC:" in server.log_file.read_text(errors="replace") or server.pid is None:
            return switches - 1
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn = await asyncpg.connect(database_url, timeout=2)
            try:
                await conn.execute("SELECT pg_switch_wal()")
            finally:
                await conn.close(timeout=2)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no PANIC after {WAL_SWITCHES_MAX} WAL switches on a full pg_wal")


@pytest.mark.parametrize("where", ["data", "wal"])
async def test_postgres_disk_full_flusher_backs_off_keeps_its_snapshot_and_catches_up(
    where: str, redis_url: str, tmp_path: Path
) -> None:
    disks.require_root("a full disk under Postgres")
    with _postgres_on_small_fs(where, tmp_path) as (server, pg_fs):
        server.start()
        try:
            await create_migrated_template(server)
            database_url = await copy_template(server)
            settings = make_settings(
                redis_url, database_url, flush_interval=0.1, statement_timeout=2
            )
            flusher_port = free_port()
            async with (
                running_api(settings) as client,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{flusher_port}") as flusher_client,
            ):
                await register_site(client)
                load = chaos.Load(client, SITE, pages=20, seed=22)
                api_ready: Counter[str] = Counter()  # "<code> <status>" of each api /readyz

                async def flusher_unready() -> bool:
                    try:
                        return (await flusher_client.get("/readyz")).status_code == 503
                    except httpx.HTTPError:
                        return False

                async def watch_api() -> None:
                    while True:
                        answer = await client.get("/readyz")
                        api_ready[f"{answer.status_code} {answer.json()['status']}"] += 1
                        await asyncio.sleep(0.2)

                with (
                    chaos.Sampler(database_url, [load]) as sampler,
                    chaos.flusher_process(
                        settings,
                        tmp_path / "flusher.log",
                        VIEWCOUNTER_METRICS_PORT=str(flusher_port),
                    ) as flusher,
                ):
                    async with load.flowing(clients=4):
                        await chaos.wait_for_batches(database_url, 0)
                        watching = asyncio.create_task(watch_api())
                        filler = await asyncio.to_thread(disks.fill, pg_fs)
                        switches = 0
                        if where == "wal":
                            switches = await _switch_wal_until_panic(server, database_url)
                        await chaos.until(
                            flusher_unready, "the flusher to report its passes failing"
                        )
                        before = load.acked_total
                        await load.more_acked(300)  # hits are counted meanwhile
                        during = load.acked_total - before
                        await asyncio.to_thread(disks.free, filler)
                        went_down = server.pid is None  # PANIC, and recovery failed on the disk
                        if went_down:
                            await asyncio.to_thread(server.restart)
                        await chaos.until_ready(flusher_client, "the flusher ready again")
                        await chaos.wait_for_batches(
                            database_url, await chaos.ledger_count(database_url)
                        )
                        watching.cancel()
                    assert await chaos.stop_gracefully(flusher) == 0
            panics = server.log_file.read_text(errors="replace").count("PANIC:")
            size = POSTGRES_FS if where == "data" else WAL_FS
            result = await chaos.final_report(
                f"Postgres {'data directory' if where == 'data' else 'pg_wal'} disk full "
                f"(tmpfs {size}), then freed", database_url, [load], sampler,
                notes=(
                    f"{during} hits acknowledged while full; "
                    + (f"{switches} WAL switches asked; " if where == "wal" else "")
                    + f"postmaster {'exited and was restarted' if went_down else 'kept running'}, "
                    f"{panics} PANIC in its log; api /readyz seen {dict(api_ready)}; "
                    "flusher unready until space returned"
                ),
            )  # fmt: skip
        finally:
            server.kill()
    assert load.unknown_total == 0
    # The api stays ready: hits need Redis only ("degraded" while Postgres is down).
    assert api_ready and all(seen.startswith("200 ") for seen in api_ready), api_ready
    if where == "wal":
        assert panics > 0
    result.assert_exact()


