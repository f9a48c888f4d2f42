"""Per-site API keys: created, listed, revoked (each logged in the same transaction), looked up
by the SHA-256 of their secret, and their last use recorded. The secret itself never gets here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from services.db import audit, queries
from services.db import pool as db_pool
from services.db.errors import UnknownSiteRow

Q = queries.load("keys")


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A key as stored (without its hash)."""

    id: str
    site: str
    scope: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_dict(self) -> dict[str, object]:
        """The key as GET /v1/sites/{site}/keys lists it."""
        return {
            "id": self.id,
            "scope": self.scope,
            "name": self.name,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "last_used_at": _iso(self.last_used_at),
            "revoked_at": _iso(self.revoked_at),
        }


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key to store: its public id, where and what it opens, and its secret's SHA-256 (hex)."""

    id: str
    site: str
    scope: str
    name: str
    secret_sha256: str
    created_at: datetime
    expires_at: datetime | None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _row(r: db_pool.Record) -> KeyRow:
    return KeyRow(
        r["id"],
        r["site"],
        r["scope"],
        r["name"],
        r["created_at"],
        r["expires_at"],
        r["last_used_at"],
        r["revoked_at"],
    )


class Keys:
    """API keys over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def create(self, key: NewKey, author: audit.Author) -> KeyRow:
        """Store `key` and log `key.create`, in one transaction; UnknownSiteRow when its site
        is not registered."""
        async with db_pool.transaction(self.pool) as conn:
            if await conn.fetchval(Q["site_exists"], key.site) is None:
                raise UnknownSiteRow(key.site)
            await conn.execute(
                Q["insert_key"],
                key.id,
                key.site,
                key.scope,
                key.name,
                key.secret_sha256,
                key.created_at,
                key.expires_at,
            )
            await audit.record(
                conn,
                key.site,
                author,
                "key.create",
                {
                    "id": key.id,
                    "scope": key.scope,
                    "name": key.name,
                    "expires_at": _iso(key.expires_at),
                },
            )
        return KeyRow(
            key.id, key.site, key.scope, key.name, key.created_at, key.expires_at, None, None
        )

    async def of_site(self, site: str) -> list[KeyRow]:
        """The site's keys, revoked and expired ones too, oldest first."""
        async with db_pool.connection(self.pool) as conn:
            return [_row(r) for r in await conn.fetch(Q["site_keys"], site)]

    async def revoke(
        self, site: str, key_id: str, at: datetime, author: audit.Author
    ) -> KeyRow | None:
        """Revoke the site's key `key_id` at `at` and log `key.revoke`, in one transaction;
        the key (as it was already, when it was revoked before: nothing is logged then), or
        None when the site has no such key."""
        async with db_pool.transaction(self.pool) as conn:
            row = await conn.fetchrow(Q["revoke_key"], site, key_id, at)
            if row is None:
                existing = await conn.fetchrow(Q["site_key"], site, key_id)
                return None if existing is None else _row(existing)
            key = _row(row)
            await audit.record(
                conn,
                site,
                author,
                "key.revoke",
                {"id": key.id, "scope": key.scope, "name": key.name},
            )
            return key

    async def by_hash(self, secret_sha256: str) -> KeyRow | None:
        """The key whose secret has this SHA-256 (hex), revoked or not; None: no such key."""
        async with db_pool.connection(self.pool) as conn:
            row = await conn.fetchrow(Q["key_by_hash"], secret_sha256)
        return None if row is None else _row(row)

    async def touch(self, last_used: Mapping[str, datetime]) -> None:
        """Record when keys were last used (never moving a key's last use back)."""
        if not last_used:
            return
        async with db_pool.connection(self.pool) as conn:
            await conn.execute(Q["touch_keys"], list(last_used), list(last_used.values()))
