"""The whole Redis key schema. No other module formats a Redis key.

Every key of a site carries the hash tag ``{vc:SITE}`` so that one hit (site hash, page hash,
pending shard) touches a single Redis Cluster slot. Pending deltas are split over
``PENDING_SHARDS`` hashes by page, so several flushers can work on one site at once and no
single hash grows with the whole site's traffic.
"""

from __future__ import annotations

import zlib

PREFIX = "vc"
PENDING_SHARDS = 8
# Field layout of a pending hash: the local day (YYYY-MM-DD, always 10 chars) then the page.
DAY_CHARS = 10

# Fields of the per-site hash.
SITE_GEN = "gen"  # present once the live totals were loaded from Postgres
SITE_VIEWS = "views"  # live total shown in the footer: Postgres views + baseline + pending
SITE_TZ = "tz"
SITE_CONFIG = "cfg"  # the site's settings as JSON (siteconfig.SiteConfig)

# Unique-visitor HyperLogLogs live this long after their last change: long enough for the
# flusher to read a day's final estimate after the day ends, even after a long outage.
VISITORS_TTL_S = 3 * 86400


def tag(site: str) -> str:
    """The hash tag that pins all keys of `site` to one Cluster slot."""
    return f"{{{PREFIX}:{site}}}"


def site_key(site: str) -> str:
    """Hash with the site's live total, time zone and load generation."""
    return f"{tag(site)}:site"


def pages_key(site: str) -> str:
    """Hash page -> live total (views + baseline + pending)."""
    return f"{tag(site)}:pages"


def shard_of(page: str) -> int:
    """Pending shard a page's deltas go to; stable across processes and restarts."""
    return zlib.crc32(page.encode()) % PENDING_SHARDS


def pending_key(site: str, shard: int) -> str:
    """Hash day+page -> hits counted but not yet moved to Postgres."""
    return f"{tag(site)}:pend:{shard}"


def snapshot_key(site: str, shard: int, batch_id: str) -> str:
    """A pending hash renamed under a batch id: frozen until the batch is in Postgres."""
    return f"{tag(site)}:snap:{shard}:{batch_id}"


# What the flusher scans for: pending shards and snapshots ("pend" and "snap" both fit the
# character classes); parse_pending_key / parse_snapshot_key tell them apart exactly.
WORK_KEYS_PATTERN = f"{{{PREFIX}:*}}:[ps][en][na][dp]:*"


def _split(key: str, kind: str) -> tuple[str, str] | None:
    """(site, rest) of a `{vc:SITE}:KIND:REST` key. A site id never holds "}", so the first
    one ends it; a page id in the rest (visitor sketches) cannot fake another kind of key."""
    head = f"{{{PREFIX}:"
    if not key.startswith(head):
        return None
    site, _, tail = key[len(head) :].partition("}")
    marker = f":{kind}:"
    if not site or not tail.startswith(marker):
        return None
    return site, tail[len(marker) :]


def parse_pending_key(key: str) -> str | None:
    """The site of a pending shard key, or None when `key` is not one."""
    parts = _split(key, "pend")
    if parts is None:
        return None
    site, shard = parts
    return site if shard.isascii() and shard.isdigit() else None


def lease_key(site: str) -> str:
    """Which flusher flushes the site now (its token, with a time to live)."""
    return f"{tag(site)}:lease"


def parse_snapshot_key(key: str) -> tuple[str, int, str] | None:
    """(site, shard, batch id) of a snapshot key, or None when `key` is not one."""
    parts = _split(key, "snap")
    if parts is None:
        return None
    site, rest = parts
    shard, sep, batch_id = rest.partition(":")
    if not (sep and shard.isascii() and shard.isdigit() and batch_id):
        return None
    return site, int(shard), batch_id


def pending_field(day: str, page: str) -> str:
    """Field of a pending hash for `page` on local `day` (hits.lua builds it the same way)."""
    return day + page


def split_pending_field(field: str) -> tuple[str, str]:
    """(day, page) of a pending hash field."""
    return field[:DAY_CHARS], field[DAY_CHARS:]


def seen_key(site: str, token: str) -> str:
    """Marks one visitor+page as counted for the dedupe window (expires with it)."""
    return f"{tag(site)}:seen:{token}"


def rate_key(site: str, token: str, minute: int) -> str:
    """Hits of one client in one clock minute (expires after two)."""
    return f"{tag(site)}:rate:{token}:{minute}"


def site_visitors_key(site: str, day: str) -> str:
    """HyperLogLog of the site's distinct visitors on local `day`."""
    return f"{tag(site)}:uv:{day}"


def page_visitors_key(site: str, day: str, page: str) -> str:
    """HyperLogLog of one page's distinct visitors on local `day`."""
    return f"{tag(site)}:uvp:{day}:{page}"


def admin_rate_key(token: str, minute: int) -> str:
    """Admin requests of one client in one clock minute (expires after two)."""
    return f"{PREFIX}:arate:{token}:{minute}"


def idempotency_key(site: str, token: str) -> str:
    """An idempotent call's record: its answer, kept for a day ("-": no record)."""
    return f"{tag(site)}:idem:{token}"


def salt_key(day: str) -> str:
    """The day's random salt for visitor hashes; expires, never copied to Postgres."""
    return f"{PREFIX}:salt:{day}"
