"""What every chaos scenario shares: load that counts what was acknowledged, processes started
and killed by pid, invariants sampled while the faults happen, and the scenario report.

Counting: a hit answered 200 is *acknowledged* (dedupe and rate limits are off in these tests,
so every 200 is counted). A hit whose answer was lost (503 after a timeout, a connection reset,
a killed worker) has an *unknown* outcome: Redis may or may not have applied it. At the end,
per page: *lost* = acknowledged hits missing from Postgres, *doubled* = hits in Postgres beyond
acknowledged + unknown. Both must be 0 (Redis AOF `everysec`: lost bounded, see its test).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from services.cli.localredis import RedisProcess
from services.cli.localservers import free_port
from services.config import Settings
from tests.support.checks import Totals, assert_consistent, totals
from tests.support.stack import ADMIN_TOKEN, BROWSER_UA, make_settings

REPO = Path(__file__).resolve().parents[2]
REPORT_FILE = REPO / "tests" / "artifacts" / "chaos.md"
REPORT_HEADER = (
    "| when (UTC) | scenario | acknowledged | in Postgres | unknown | lost | doubled "
    "| samples | notes |\n|---|---|---|---|---|---|---|---|---|\n"
)
POLL_S = 0.02
# 503 error codes that say the hit was refused before anything of it was applied (Redis
# answered MISCONF: it checks that before running a write).
NOT_APPLIED_CODES = frozenset({"redis_persistence_failed"})
WAIT_S = 30.0
SAMPLE_EVERY_S = 0.2


async def until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = WAIT_S
) -> None:
    """Poll `condition` until it holds; a hang fails naming `what` (a bound, not a timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await _holds(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


async def answers_ready(client: httpx.AsyncClient, url: str = "/readyz") -> bool:
    """Whether `url` (a readiness route) answers 200; False while nothing answers."""
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def until_ready(client: httpx.AsyncClient, what: str) -> None:
    """Poll the client's /readyz until it answers 200; a hang fails naming `what`."""
    await until(lambda: answers_ready(client), what)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    value = condition()
    return await value if inspect.isawaitable(value) else bool(value)


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `viewcounter` process built from `settings` (and `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIEWCOUNTER_", "PROMETHEUS_"))}
    env.update(
        VIEWCOUNTER_REDIS_URL=settings.redis_url,
        VIEWCOUNTER_DATABASE_URL=settings.database_url,
        VIEWCOUNTER_ADMIN_TOKEN=ADMIN_TOKEN,
        VIEWCOUNTER_FLUSH_INTERVAL=str(settings.flush_interval),
        VIEWCOUNTER_REDIS_TIMEOUT=str(settings.redis_timeout),
        VIEWCOUNTER_STATEMENT_TIMEOUT=str(settings.statement_timeout),
        VIEWCOUNTER_DEDUPE_WINDOW=str(settings.dedupe_window),
        VIEWCOUNTER_RATE_LIMIT=str(settings.rate_limit),
        VIEWCOUNTER_ADMIN_RATE_LIMIT=str(settings.admin_rate_limit),
        VIEWCOUNTER_SHARDS=str(settings.shards),
        # A killed flusher's units are free again this soon (the default is 15 s).
        VIEWCOUNTER_FLUSH_LEASE="1",
        VIEWCOUNTER_METRICS_PORT=str(free_port()),
        VIEWCOUNTER_API_METRICS_PORT=str(free_port()),
        VIEWCOUNTER_STARTUP_TIMEOUT="20",
        VIEWCOUNTER_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


@contextmanager
def spawned(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    *,
    grace_s: float | None = None,
    cwd: Path = REPO,
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (in `cwd`) in its own process group; killed (group, -9) at the end if
    still up, or with `grace_s`, sent SIGTERM first and killed only if it is not gone that
    soon."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if grace_s is not None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(grace_s)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def flusher_process(
    settings: Settings, log: Path, *, crash_at: str | None = None, **extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`viewcounter flusher` as its own process; with `crash_at`, the same flusher that SIGKILLs
    itself the first time it reaches that phase (tests/support/crashing_flusher.py)."""
    crashing = ["tests.support.crashing_flusher", crash_at]
    module = crashing if crash_at else ["services.cli", "flusher"]
    with spawned([sys.executable, "-m", *module], process_env(settings, **extra), log) as proc:
        yield proc


@contextmanager
def api_process(
    settings: Settings, log: Path, *, workers: int, **extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`viewcounter api --workers N` on a free port as its own process (`extra` added to its
    environment): (process, port)."""
    port = free_port()
    argv = [sys.executable, "-m", "services.cli", "api", "--workers", str(workers)]
    with spawned([*argv, "--port", str(port)], process_env(settings, **extra), log) as proc:
        yield proc, port


def browser_client(
    port: int, *, timeout: float, connections: int, keepalive: int
) -> httpx.AsyncClient:
    """A client of the api on 127.0.0.1:`port` that counts as a browser."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=timeout,
        headers={"user-agent": BROWSER_UA},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=keepalive),
    )


def fsyncing_redis_settings(
    own_redis: Callable[..., RedisProcess], database_url: str, redis_timeout_s: float
) -> tuple[RedisProcess, Settings]:
    """A Redis of the test's own that fsyncs every write (appendfsync always), and settings
    on it with that Redis timeout and a flush every 0.1 s."""
    server = own_redis(appendfsync="always")
    settings = make_settings(
        server.url, database_url, flush_interval=0.1, redis_timeout=redis_timeout_s
    )
    return server, settings


async def stop_gracefully(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM a process we started and wait for its exit code."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(proc.wait, timeout_s)


class Load:
    """Clients sending hits to one site until stopped; counts, per page, what was sent, what was
    acknowledged and what has an unknown outcome."""

    def __init__(self, client: httpx.AsyncClient, site: str, pages: int, seed: int) -> None:
        self.client = client
        self.site = site
        self.pages = pages
        self.rng = random.Random(seed)
        self.sent: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.refused = 0  # answered 503 (a subset of unknown)
        self.not_applied: Counter[str] = Counter()  # 503 with a NOT_APPLIED_CODES code
        self.stop = asyncio.Event()
        self._running: asyncio.Future[list[None]] | None = None
        self._ids = itertools.count()
        self._started: dict[int, float] = {}  # requests in flight -> when they were sent
        # Every answer: (when sent, seconds until answered, HTTP status; 0 when none came).
        self.answers: list[tuple[float, float, int]] = []

    @property
    def acked_total(self) -> int:
        return sum(self.acked.values())

    @property
    def unknown_total(self) -> int:
        return sum(self.unknown.values())

    @property
    def in_flight(self) -> int:
        return sum(self.sent.values()) - self.acked_total - self.unknown_total

    def waiting_longer_than(self, age_s: float) -> int:
        """Requests sent more than `age_s` ago and still waiting for their answer."""
        sent_before = time.monotonic() - age_s
        return sum(1 for started in self._started.values() if started < sent_before)

    async def one(self, page: str) -> dict[str, object] | None:
        """Send one hit; its answer when acknowledged, None when the outcome is unknown."""
        self.sent[page] += 1
        request = next(self._ids)
        self._started[request] = sent_at = time.monotonic()
        try:
            response = await self.client.post(f"/v1/sites/{self.site}/hits", json={"page": page})
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError):  # (rawhttp's too)
            self.answers.append((sent_at, time.monotonic() - sent_at, 0))
            self.unknown[page] += 1
            return None
        finally:
            del self._started[request]
        self.answers.append((sent_at, time.monotonic() - sent_at, response.status_code))
        if response.status_code == 200:
            self.acked[page] += 1
            body: dict[str, object] = response.json()
            return body
        assert response.status_code == 503, response.text
        self.unknown[page] += 1  # Redis may or may not have applied it before failing
        self.refused += 1
        if response.json()["error"]["code"] in NOT_APPLIED_CODES:
            self.not_applied[page] += 1
        return None

    async def client_loop(self) -> None:
        while not self.stop.is_set():
            if await self.one(f"page-{self.rng.randrange(self.pages)}") is None:
                await asyncio.sleep(0.01)  # a failing backend: do not spin
            else:
                await asyncio.sleep(0)

    def run(self, clients: int) -> asyncio.Future[list[None]]:
        return asyncio.gather(*(self.client_loop() for _ in range(clients)))

    @asynccontextmanager
    async def flowing(self, clients: int) -> AsyncIterator[None]:
        """Hits flow from `clients` clients inside the block; all answered when it ends."""
        self._running = self.run(clients)
        try:
            yield
        finally:
            await self.halt()

    async def halt(self) -> None:
        """Stop the clients and wait until every hit sent has its answer (or error)."""
        self.stop.set()
        if self._running is not None:
            await self._running

    async def more_acked(self, count: int) -> None:
        """Wait until `count` more hits than now are acknowledged."""
        target = self.acked_total + count
        await until(lambda: self.acked_total >= target, f"{count} more acknowledged hits")


async def ledger_count(database_url: str) -> int:
    """Batches committed (rows of `flush_batches`)."""
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM flush_batches"))
    finally:
        await conn.close()


async def committed_batches(database_url: str) -> list[asyncpg.Record]:
    """(batch_id, snapshot_keys) of every batch in the flush ledger."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT batch_id, snapshot_keys FROM flush_batches")
    finally:
        await conn.close()


async def wait_for_batches(database_url: str, above: int, timeout_s: float = WAIT_S) -> int:
    """Poll until more than `above` batches are committed; the new count."""
    seen = above

    async def more() -> bool:
        nonlocal seen
        seen = await ledger_count(database_url)
        return seen > above

    await until(more, f"a batch beyond {above} to be committed", timeout_s)
    return seen


class Sampler:
    """Checks the invariants in Postgres every SAMPLE_EVERY_S while a scenario runs: one
    consistent state (site == pages == daily buckets), and no page above what was sent to it
    (the upper bound holds at every instant, not only at the end). Reads that fail because
    Postgres is down are skipped and counted."""

    def __init__(self, database_url: str, loads: Sequence[Load]) -> None:
        self.database_url = database_url
        self.loads = loads
        self.samples = 0
        self.skipped = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        for site in sorted({load.site for load in self.loads}):
            t = await totals(self.database_url, site)
            sent: Counter[str] = Counter()  # read after the snapshot: sent only grows
            for load in self.loads:
                if load.site == site:
                    sent.update(load.sent)
            assert_consistent(t)
            over = {p: n for p, n in t.pages.items() if n > sent[p]}
            assert not over, f"{site}: Postgres holds more than was ever sent: {over}"
        self.samples += 1

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sample()
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                # a connection Postgres dropped mid-query (killed): asyncpg's own state error
                asyncpg.InternalClientError,
                TimeoutError,
            ):
                self.skipped += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_EVERY_S)

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run(), name="invariant-sampler")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def result(self) -> None:
        """Wait for the sampler; re-raise an invariant it saw broken."""
        self._stop.set()
        if self._task is not None:
            await self._task


@contextmanager
def sampled_with_flusher(
    settings: Settings, loads: Sequence[Load], log: Path
) -> Iterator[tuple[Sampler, subprocess.Popen[bytes]]]:
    """A Sampler of `loads` and a `viewcounter flusher` process, both for the whole block."""
    with (
        Sampler(settings.database_url, loads) as sampler,
        flusher_process(settings, log) as flusher,
    ):
        yield sampler, flusher


@dataclass
class Outcome:
    """One scenario's figures."""

    scenario: str
    acknowledged: int
    in_postgres: int
    unknown: int
    lost: int
    doubled: int
    samples: int
    notes: str = ""
    lost_by_page: dict[str, int] = field(default_factory=dict)
    doubled_by_page: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"| {when} | {self.scenario} | {self.acknowledged} | {self.in_postgres} "
            f"| {self.unknown} | {self.lost} | {self.doubled} | {self.samples} | {self.notes} |\n"
        )

    def assert_exact(self) -> None:
        """Nothing acknowledged lost, nothing counted twice."""
        assert self.lost == 0, f"{self.scenario}: lost {self.lost_by_page}"
        assert self.doubled == 0, f"{self.scenario}: doubled {self.doubled_by_page}"


def outcome(
    scenario: str,
    acked: Mapping[str, int],
    unknown: Mapping[str, int],
    stored: Mapping[str, int],
    *,
    samples: int = 0,
    notes: str = "",
) -> Outcome:
    """Compare, per key (page, or site/page), what was acknowledged with what Postgres holds."""
    keys = set(acked) | set(unknown) | set(stored)
    lost = {k: acked.get(k, 0) - stored.get(k, 0) for k in keys}
    doubled = {k: stored.get(k, 0) - acked.get(k, 0) - unknown.get(k, 0) for k in keys}
    return Outcome(
        scenario=scenario,
        acknowledged=sum(acked.values()),
        in_postgres=sum(stored.values()),
        unknown=sum(unknown.values()),
        lost=sum(n for n in lost.values() if n > 0),
        doubled=sum(n for n in doubled.values() if n > 0),
        samples=samples,
        notes=notes,
        lost_by_page={k: n for k, n in lost.items() if n > 0},
        doubled_by_page={k: n for k, n in doubled.items() if n > 0},
    )


def record(result: Outcome) -> Outcome:
    """Append the scenario's row to tests/artifacts/chaos.md and print it."""
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    new = not REPORT_FILE.exists() or REPORT_FILE.stat().st_size == 0
    with REPORT_FILE.open("a", encoding="utf-8") as out:
        if new:
            out.write(REPORT_HEADER)
        out.write(result.row())
    print(
        f"\nchaos {result.scenario}: acknowledged {result.acknowledged}, in Postgres "
        f"{result.in_postgres}, unknown {result.unknown}, lost {result.lost}, doubled "
        f"{result.doubled}, samples {result.samples}; {result.notes}"
    )
    return result


def merge(loads: Sequence[Load], *, by_site: bool = False) -> tuple[Counter[str], Counter[str]]:
    """(acknowledged, unknown) of several loads, keyed by page (or site/page)."""
    acked: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for load in loads:
        prefix = f"{load.site}/" if by_site else ""
        acked.update({prefix + p: n for p, n in load.acked.items()})
        unknown.update({prefix + p: n for p, n in load.unknown.items()})
    return acked, unknown


async def final_report(
    scenario: str,
    database_url: str,
    loads: Sequence[Load],
    sampler: Sampler | None = None,
    *,
    notes: str = "",
) -> Outcome:
    """Read Postgres, check its consistency, compute and record the scenario's figures."""
    if sampler is not None:
        await sampler.result()
        await sampler.sample()  # the final state too
    stored: Counter[str] = Counter()
    by_site = len({load.site for load in loads}) > 1
    for site in sorted({load.site for load in loads}):
        t: Totals = await totals(database_url, site)
        assert_consistent(t)
        prefix = f"{site}/" if by_site else ""
        stored.update({prefix + p: n for p, n in t.pages.items()})
    acked, unknown = merge(loads, by_site=by_site)
    samples = sampler.samples if sampler is not None else 0
    if sampler is not None and sampler.skipped:
        notes = f"{notes}; {sampler.skipped} samples skipped (Postgres down)".lstrip("; ")
    return record(outcome(scenario, acked, unknown, stored, samples=samples, notes=notes))
