"""Opening a process's Redis client and Postgres pool from Settings, sized by its role, and
the stores on them. Every process opens its clients here, and closes them through it.

The stores share one client and one `Units` (a load or a baseline through one store drops
the cached site total another reads); each caller is handed only the store it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.config import Settings
from services.counter import client
from services.counter.baselinestore import BaselineStore
from services.counter.calls import ONLINE_WINDOW_S
from services.counter.flushstore import FlushStore
from services.counter.hitstore import DEFAULT_TIMEOUT_S, HitStore
from services.counter.keygen import KeyGeneration
from services.counter.pendingviews import PendingViews
from services.counter.units import Units
from services.db import audit as db_audit
from services.db import baselines as db_baselines
from services.db import keys as db_keys
from services.db import ledger as db_ledger
from services.db import pool as db_pool
from services.db import reports as db_reports
from services.db import sites as db_sites
from services.db import titles as db_titles
from services.db import top as db_top


@dataclass(frozen=True)
class Role:
    """How many connections (and how patient) a process's clients are."""

    name: str
    postgres_max_size: int
    redis_connections: int | None = None  # None: VIEWCOUNTER_REDIS_MAX_CONNECTIONS
    redis_timeout_s: float | None = None  # None: VIEWCOUNTER_REDIS_TIMEOUT
    redis_timeout_floor_s: float = 0.0  # the timeout is never below this
    # Reads reports (VIEWCOUNTER_REPORTS_DATABASE_URL, a replica say) rather than writes.
    reads_reports: bool = False


# The api: Redis as configured (the hit path's connections); min_size 0 in Postgres, so the
# api starts, and counts, while Postgres is down.
API = Role("api", postgres_max_size=10)
# The api's metrics listener (ops_listener.py): a scrape or a readiness probe at a time.
API_OPS = Role("api metrics", postgres_max_size=1, redis_connections=4)
# The api's start-up wait: a few quick checks before the workers start.
API_STARTUP = Role("api start-up", postgres_max_size=1, redis_connections=2, redis_timeout_s=2.0)
# The flusher's Redis timeout stays above its WAITAOF wait (worker.FSYNC_WAIT_MS, 2 s).
FLUSHER = Role("flusher", postgres_max_size=4, redis_connections=8, redis_timeout_floor_s=3.0)
# The api's reads of reports when they have their own database (connect_reports).
API_REPORTS = Role("api reports", postgres_max_size=4, reads_reports=True)
# Commands: one site at a time; an import applies large chunks, so it waits longer.
COMMAND = Role("command", postgres_max_size=2, redis_connections=4, redis_timeout_s=5.0)
IMPORT = Role("import", postgres_max_size=2, redis_connections=4, redis_timeout_s=10.0)
REPORT = Role("report", postgres_max_size=2, reads_reports=True)  # Postgres only


def redis_timeout_s(settings: Settings, role: Role) -> float:
    """How long `role` waits for Redis: a call, and a hit or read from the moment it is taken."""
    timeout_s = settings.redis_timeout if role.redis_timeout_s is None else role.redis_timeout_s
    return max(timeout_s, role.redis_timeout_floor_s)


def connect_redis(settings: Settings, role: Role) -> client.Client:
    """The Redis client of `role`."""
    return client.connect(
        settings.redis_url,
        max_connections=role.redis_connections or settings.redis_max_connections,
        timeout_s=redis_timeout_s(settings, role),
    )


async def connect_postgres(settings: Settings, role: Role) -> db_pool.Pool:
    """The Postgres pool of `role` (statement timeouts from VIEWCOUNTER_STATEMENT_TIMEOUT):
    on the reports database for a role that reads reports, else on the main one."""
    return await db_pool.connect_pool(
        settings.reports_url if role.reads_reports else settings.database_url,
        statement_timeout_s=settings.statement_timeout,
        max_size=role.postgres_max_size,
    )


async def connect_reports(settings: Settings) -> db_pool.Pool | None:
    """The api's own pool for reports and the dashboard's data when they read another
    database than the main one (VIEWCOUNTER_REPORTS_DATABASE_URL); None: the main pool."""
    if settings.reports_url == settings.database_url:
        return None
    return await connect_postgres(settings, API_REPORTS)


@dataclass(frozen=True)
class Repositories:
    """The Postgres repositories on one pool (each receives the pool, none closes it)."""

    pool: db_pool.Pool
    sites: db_sites.Sites
    ledger: db_ledger.Ledger
    baselines: db_baselines.Baselines
    reports: db_reports.Reports
    titles: db_titles.Titles
    top: db_top.TopPages
    keys: db_keys.Keys
    audit: db_audit.AuditLog

    @classmethod
    def on(cls, pool: db_pool.Pool, reports_pool: db_pool.Pool | None = None) -> Repositories:
        """Every repository on `pool`; reports on `reports_pool` when given."""
        return cls(
            pool,
            db_sites.Sites(pool),
            db_ledger.Ledger(pool),
            db_baselines.Baselines(pool),
            db_reports.Reports(pool if reports_pool is None else reports_pool),
            db_titles.Titles(pool),
            db_top.TopPages(pool),
            db_keys.Keys(pool),
            db_audit.AuditLog(pool),
        )


class Clients:
    """A process's Redis client (and Postgres pool), the stores on them, and their close."""

    def __init__(
        self,
        redis: client.Client,
        pool: db_pool.Pool | None = None,
        *,
        units: int = 1,
        online_window_s: int = ONLINE_WINDOW_S,
        redis_timeout_s: float = DEFAULT_TIMEOUT_S,
        reports_pool: db_pool.Pool | None = None,
        wait_replicas: int = 0,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.reports_pool = reports_pool
        self.units = Units(redis, units)
        self.hits = HitStore(redis, self.units, online_window_s, redis_timeout_s)
        self.flush = FlushStore(redis, self.units, wait_replicas=wait_replicas)
        self.baselines = BaselineStore(redis, self.units)
        self.pending = PendingViews(redis, self.units)
        self.key_generation = KeyGeneration(redis)
        self._db = None if pool is None else Repositories.on(pool, reports_pool)

    @property
    def db(self) -> Repositories:
        """The repositories on the pool (of clients opened with one)."""
        if self._db is None:
            raise RuntimeError("these clients have no Postgres pool")
        return self._db

    async def aclose(self) -> None:
        """Finish the calls in flight, then close the stores' clients, Redis, and Postgres."""
        try:
            await self.hits.close()
            await self.units.close()
            await self.flush.close()
            await self.redis.aclose()
        finally:
            try:
                if self.pool is not None:
                    await self.pool.close()
            finally:
                if self.reports_pool is not None:
                    await self.reports_pool.close()


async def connect(settings: Settings, role: Role) -> Clients:
    """The Redis client and Postgres pool of `role`, with the stores on them; the api also
    opens its reports pool (connect_reports)."""
    redis = connect_redis(settings, role)
    pool = reports_pool = None
    try:
        pool = await connect_postgres(settings, role)
        if role is API:
            reports_pool = await connect_reports(settings)
    except BaseException:
        await redis.aclose()
        if pool is not None:
            await pool.close()
        raise
    return Clients(
        redis,
        pool,
        units=settings.shards,
        online_window_s=settings.online_window,
        redis_timeout_s=redis_timeout_s(settings, role),
        reports_pool=reports_pool,
        wait_replicas=settings.redis_wait_replicas,
    )
