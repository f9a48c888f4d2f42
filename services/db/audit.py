"""The audit log: every admin action (site settings, pages, baselines, imports, keys), written
by the repository that makes the change, in the same transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import orjson

from services.db import pool as db_pool
from services.db import queries

Q = queries.load("audit")
Action = Literal[
    "site.create",
    "site.update",
    "pages.register",
    "baseline.set",
    "import",
    "key.create",
    "key.revoke",
]
MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class Author:
    """Who makes a change, as the log names them (`operator`, `key:<id>:<name>`,
    `cli:<os user>`), and the id of the request that made it (None from the command line)."""

    actor: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One logged admin action."""

    id: int
    at: datetime
    site: str
    actor: str
    action: str
    detail: dict[str, object]
    request_id: str | None

    def as_dict(self) -> dict[str, object]:
        """The entry as GET /v1/sites/{site}/audit answers it."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "site": self.site,
            "actor": self.actor,
            "action": self.action,
            "detail": self.detail,
            "request_id": self.request_id,
        }


async def record(
    conn: db_pool.Conn, site: str, author: Author, action: Action, detail: Mapping[str, object]
) -> int:
    """Log `action` on `site` by `author` on `conn` (inside the change's transaction); its id."""
    entry_id: int = await conn.fetchval(
        Q["insert_entry"],
        site,
        author.actor,
        action,
        orjson.dumps(detail).decode(),
        author.request_id,
    )
    return entry_id


class AuditLog:
    """Reading the audit log over a pool (which it never closes)."""

    def __init__(self, pool: db_pool.Pool) -> None:
        self.pool = pool

    async def page(self, site: str, limit: int, before: int | None) -> list[Entry]:
        """Up to `limit` entries of `site` older than the entry `before` (None: the newest),
        newest first."""
        async with db_pool.connection(self.pool) as conn:
            rows = await conn.fetch(Q["page"], site, before, limit)
        return [
            Entry(
                r["id"],
                r["at"],
                r["site"],
                r["actor"],
                r["action"],
                orjson.loads(r["detail"]),
                r["request_id"],
            )
            for r in rows
        ]
