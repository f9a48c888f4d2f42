"""The whole Redis key schema. No other module formats a Redis key.

A site's counting state is split by page over `VIEWCOUNTER_SHARDS` *units* (default 1 on a
single Redis, 16 on a Cluster). Unit 0 is named after the site itself, unit k > 0 is
``SITE~k`` ("~" never occurs in a site id). Every key of a unit carries the hash tag
``{vc:UNIT}``, so one hit (the unit's hash, page hash, pending hashes) touches a single Redis
Cluster slot, and the units of one busy site spread over the Cluster's nodes. Within a unit,
pending deltas are split over ``PENDING_SHARDS`` hashes by page, so no single hash grows with
the whole unit's traffic. Site-wide keys that are not counting state (settings copy, batch
idempotency) live in unit 0.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import zlib

PREFIX = "vc"
PENDING_SHARDS = 8
UNIT_MARK = "~"
MAX_UNITS = 1024
# The number of units the keys in this Redis were written with (one key; see startup.check_layout).
LAYOUT_KEY = f"{PREFIX}:units"
# The flushers alive and their last pass (one key; see flushers.lua).
FLUSHERS_KEY = f"{PREFIX}:flushers"
# The API keys' revocation generation (one key, a counter): every revocation increments it,
# and each api process drops its cache of keys when it sees the number change (keygen.py).
API_KEYS_GENERATION_KEY = f"{PREFIX}:apikeys:gen"
# Field layout of a pending hash: the local day (YYYY-MM-DD, always 10 chars) then the page.
DAY_CHARS = 10

# Fields of the per-site hash.
SITE_GEN = "gen"  # present once the live totals were loaded from Postgres
SITE_VIEWS = "views"  # live total shown in the footer: Postgres views + baseline + pending
SITE_TZ = "tz"
SITE_CONFIG = "cfg"  # the site's settings as JSON (siteconfig.SiteConfig)
SITE_PAGES = "npages"  # distinct pages the unit's page buckets hold (for the page bound)

# A unit's page totals are spread over this many small hashes ("buckets"), each field a
# PAGE_FIELD_BYTES digest of the page id: Redis keeps a hash of up to 128 short fields as a
# compact listpack (about 16 B a page here) instead of a hash table (about 47 B), and page
# ids longer than 64 bytes would make it a hash table too. Up to ~100,000 pages a unit stay
# compact; past that, more units (VIEWCOUNTER_SHARDS) keep them so.
PAGE_BUCKETS = 1024
PAGE_FIELD_BYTES = 8

# The days hash of a unit (days_key) keeps the counted views of this many recent local days:
# enough for this month (31 days) and a margin; the flusher and the load drop older fields.
DAYS_KEPT = 40
# A field of the days hash (not a date) present once the hash is exact: set by a load from
# Postgres, or by the flusher's one-time fill of a unit loaded by an earlier release.
DAYS_FILLED = "filled"

# Unique-visitor HyperLogLogs live this long after their last change: long enough for the
# flusher to read a day's final estimate after the day ends, even after a long outage.
VISITORS_TTL_S = 3 * 86400


def tag(unit: str) -> str:
    """The hash tag that pins all keys of `unit` (a site, or one of its units) to one slot."""
    return f"{{{PREFIX}:{unit}}}"


def unit(site: str, index: int) -> str:
    """Unit `index` of `site`: the site id itself for unit 0, else ``SITE~index``."""
    return site if index == 0 else f"{site}{UNIT_MARK}{index}"


def units(site: str, count: int) -> list[str]:
    """All `count` units of `site`, unit 0 first."""
    return [unit(site, i) for i in range(count)]


def unit_index(page: str, count: int) -> int:
    """The unit (0..count-1) holding `page`; stable across processes and restarts. Taken
    from other bits of the hash than `shard_of`, so a unit's pages use all its shards."""
    return (zlib.crc32(page.encode()) // PENDING_SHARDS) % count


def site_of(unit_id: str) -> str:
    """The site a unit belongs to."""
    return unit_id.partition(UNIT_MARK)[0]


def site_key(unit: str) -> str:
    """Hash with the unit's part of the site's live total, the time zone, settings and the
    unit's load generation."""
    return f"{tag(unit)}:site"


def legacy_pages_key(unit: str) -> str:
    """The single page id -> live total hash of releases before page buckets (migrated into
    the buckets at start-up, then gone)."""
    return f"{tag(unit)}:pages"


LEGACY_PAGES_PATTERN = f"{{{PREFIX}:*}}:pages"


def parse_legacy_pages_key(key: str) -> str | None:
    """The unit of a pre-bucket pages hash key, or None when `key` is not one."""
    head, tail = f"{{{PREFIX}:", "}:pages"
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    unit = key[len(head) : -len(tail)]
    return unit if unit and "}" not in unit else None


def page_entry(unit: str, page: str) -> tuple[str, bytes]:
    """(bucket key, field) holding `page`'s live total (views + baseline + pending): the
    field is a digest of the page id (a collision would merge two pages' live totals, about
    once in 10^8 for a unit of a million pages; Postgres keeps pages by name regardless)."""
    field = hashlib.blake2b(page.encode(), digest_size=PAGE_FIELD_BYTES).digest()
    bucket = int.from_bytes(field[:4], "big") % PAGE_BUCKETS
    return f"{tag(unit)}:pages:{bucket}", field


def shard_of(page: str) -> int:
    """Pending shard a page's deltas go to; stable across processes and restarts."""
    return zlib.crc32(page.encode()) % PENDING_SHARDS


def pending_key(unit: str, shard: int) -> str:
    """Hash day+page -> hits counted but not yet moved to Postgres."""
    return f"{tag(unit)}:pend:{shard}"


def snapshot_key(unit: str, shard: int, batch_id: str) -> str:
    """A pending hash renamed under a batch id: frozen until the batch is in Postgres."""
    return f"{tag(unit)}:snap:{shard}:{batch_id}"


# What an older release's flusher scanned for, and this one scans for once (the upgrade to
# the work index, below): pending shards and snapshots ("pend" and "snap" both fit the
# character classes); parse_pending_key / parse_snapshot_key tell them apart exactly.
WORK_KEYS_PATTERN = f"{{{PREFIX}:*}}:[ps][en][na][dp]:*"


def _split(key: str, kind: str) -> tuple[str, str] | None:
    """(unit, rest) of a `{vc:UNIT}:KIND:REST` key. A unit id never holds "}", so the first
    one ends it; a page id in the rest (visitor sketches) cannot fake another kind of key."""
    head = f"{{{PREFIX}:"
    if not key.startswith(head):
        return None
    unit, _, tail = key[len(head) :].partition("}")
    marker = f":{kind}:"
    if not unit or not tail.startswith(marker):
        return None
    return unit, tail[len(marker) :]


def parse_pending_key(key: str) -> str | None:
    """The unit of a pending shard key, or None when `key` is not one."""
    parts = _split(key, "pend")
    if parts is None:
        return None
    unit, shard = parts
    return unit if shard.isascii() and shard.isdigit() else None


def lease_key(unit: str) -> str:
    """Which flusher flushes the unit now (its token, with a time to live)."""
    return f"{tag(unit)}:lease"


def parse_snapshot_key(key: str) -> tuple[str, int, str] | None:
    """(unit, shard, batch id) of a snapshot key, or None when `key` is not one."""
    parts = _split(key, "snap")
    if parts is None:
        return None
    unit, rest = parts
    shard, sep, batch_id = rest.partition(":")
    if not (sep and shard.isascii() and shard.isdigit() and batch_id):
        return None
    return unit, int(shard), batch_id


def titles_key(unit: str) -> str:
    """Hash page id -> the title last learned from a hit, not yet moved to Postgres. Named
    like a pending shard (`pend:titles`), so the upgrade's one SCAN for work finds it too."""
    return f"{tag(unit)}:pend:{TITLES_SHARD}"


TITLES_SHARD = "titles"


def parse_titles_key(key: str) -> str | None:
    """The unit of a learned-titles hash key, or None when `key` is not one."""
    parts = _split(key, "pend")
    if parts is None:
        return None
    unit, rest = parts
    return unit if rest == TITLES_SHARD else None


def pending_field(day: str, page: str) -> str:
    """Field of a pending hash for `page` on local `day` (hits.lua builds it the same way)."""
    return day + page


def split_pending_field(field: str) -> tuple[str, str]:
    """(day, page) of a pending hash field."""
    return field[:DAY_CHARS], field[DAY_CHARS:]


# Dedupe marks. A mark is a field of a small hash, not a key of its own: the hash of unit U,
# dedupe window W (seconds), *generation* G (the process clock's unix seconds // W) and shard
# S (from the mark's token) holds one field per (visitor, page) counted in that generation: a
# SEEN_FIELD_BYTES fingerprint -> the second of the generation it was counted in (0..W-1).
# A hit looks in its own generation and the one before (their hashes are its two keys), so a
# repeat is refused exactly while less than W seconds passed since the counted view; each
# hash expires when its next generation ends (2W after it began). Fields of 8 bytes and small
# integer values keep each hash a compact listpack (about 13 B a mark) while it holds at most
# 128 marks (Redis' default hash-max-listpack-entries): SEEN_SHARDS hashes per unit and
# generation keep up to ~1.6 million marks per unit and window so; past that, more units
# (VIEWCOUNTER_SHARDS). Measured in bench/suite.py `marks`.
SEEN_SHARDS = 16384
SEEN_FIELD_BYTES = 8


def seen_generation(time_s: int, window_s: int) -> tuple[int, int]:
    """(generation, second within it) of unix second `time_s` for a dedupe window of
    `window_s` seconds (> 0)."""
    return divmod(time_s, window_s)


def seen_entry(
    unit: str, token: str, window_s: int, generation: int
) -> tuple[str, str, bytes]:
    """(hash of `generation`, hash of the generation before, field) of the dedupe mark of
    `token` (a visitors.seen_token, hex) in `unit` for a window of `window_s` seconds: the
    shard comes from the token's first 4 bytes, the field is its next SEEN_FIELD_BYTES (two
    visitor+page pairs share a mark only if both agree: about once in 2^78 pairs)."""
    raw = bytes.fromhex(token)
    shard = int.from_bytes(raw[:4], "big") % SEEN_SHARDS
    head = f"{tag(unit)}:seen:{window_s}:"
    return (
        f"{head}{generation}:{shard}",
        f"{head}{generation - 1}:{shard}",
        raw[4 : 4 + SEEN_FIELD_BYTES],
    )


def seen_off_key(unit: str) -> str:
    """Stands for a hit's dedupe hashes when its site has no dedupe window (never written)."""
    return f"{tag(unit)}:seen:off"


def rate_key(unit: str, token: str, minute: int) -> str:
    """Hits of one client in one clock minute (expires after two)."""
    return f"{tag(unit)}:rate:{token}:{minute}"


def site_visitors_key(unit: str, day: str) -> str:
    """HyperLogLog of the distinct visitors of the unit's pages on local `day` (the site's,
    when it has one unit; else the union over its units)."""
    return f"{tag(unit)}:uv:{day}"


def page_visitors_key(unit: str, day: str, page: str) -> str:
    """HyperLogLog of one page's distinct visitors on local `day`."""
    return f"{tag(unit)}:uvp:{day}:{page}"


def days_key(unit: str) -> str:
    """Hash local day (YYYY-MM-DD) -> views counted under that day in the unit (Postgres'
    part plus pending and in-flight deltas), and the DAYS_FILLED marker. No TTL: it is live
    counting state, kept bounded by dropping days older than DAYS_KEPT."""
    return f"{tag(unit)}:days"


def online_key(unit: str, minute: int) -> str:
    """HyperLogLog of the visitors the unit saw in clock minute `minute` (unix time // 60);
    expires a little after the online window has passed it."""
    return f"{tag(unit)}:on:{minute}"


def visitors_merge_keys(unit: str) -> tuple[str, str]:
    """Scratch keys where merge_visitors.lua unions the visitor sketches of several units."""
    return f"{tag(unit)}:uvmerge:0", f"{tag(unit)}:uvmerge:1"


def api_keys_generation_key() -> str:
    """The API keys' revocation generation (a counter; no TTL)."""
    return API_KEYS_GENERATION_KEY


def admin_rate_key(token: str, minute: int) -> str:
    """Admin requests of one client in one clock minute (expires after two)."""
    return f"{PREFIX}:arate:{token}:{minute}"


def idempotency_key(unit: str, token: str) -> str:
    """An idempotent call's record: its answer, kept for a day ("-": no record)."""
    return f"{tag(unit)}:idem:{token}"


def salt_key(day: str) -> str:
    """The day's random salt for visitor hashes; expires, never copied to Postgres."""
    return f"{PREFIX}:salt:{day}"


# --- The work index (docs/architecture.md#the-work-index) -----------------------------------
# The flusher finds its work through two sorted sets per index slot, never by SCAN:
# `{T}:work` (unit -> Redis ms when it first had pending deltas or learned titles since its
# last snapshot), written by hits.lua in the same atomic call as the delta, and `{T}:snaps`
# (snapshot key -> the same first-dirty ms), written by snapshot.lua with its RENAMEs and
# cleared by drop.lua with the DEL. On a Redis Cluster there is one index slot per Cluster
# slot, its tag T chosen to hash to that slot, so a unit's script writes its index on its own
# slot; on a single Redis all units share index slot 0.
CLUSTER_SLOTS = 16384
WORK_TAG_PREFIX = f"{PREFIX}~w:"
# Set once the work of an older release's layout (found by one SCAN) is in the index.
WORK_INDEXED_KEY = f"{PREFIX}:workindexed"


@functools.cache
def _work_tags() -> tuple[str, ...]:
    """For each Cluster slot, a short tag `vc~w:N` that hashes to it (CRC16, as Redis Cluster
    does): the first N found for each slot, about 170,000 tries (~0.6 s, once a process)."""
    prefix = WORK_TAG_PREFIX.encode()
    seed = binascii.crc_hqx(prefix, 0)
    found = [-1] * CLUSTER_SLOTS
    left, n = CLUSTER_SLOTS, 0
    while left:
        slot = binascii.crc_hqx(b"%d" % n, seed) % CLUSTER_SLOTS
        if found[slot] < 0:
            found[slot] = n
            left -= 1
        n += 1
    return tuple(f"{WORK_TAG_PREFIX}{m}" for m in found)


def cluster_slot(unit: str) -> int:
    """The Redis Cluster slot of the unit's keys (CRC16 of its hash tag's content)."""
    return binascii.crc_hqx(tag(unit)[1:-1].encode(), 0) % CLUSTER_SLOTS


def work_slot(unit: str, per_slot: bool) -> int:
    """The index slot recording the unit's work: its Cluster slot (`per_slot`), else 0."""
    return cluster_slot(unit) if per_slot else 0


def work_key(index_slot: int) -> str:
    """Sorted set unit -> first-dirty ms of the units of `index_slot` with work."""
    return f"{{{_work_tags()[index_slot]}}}:work"


def snaps_key(index_slot: int) -> str:
    """Sorted set snapshot key -> first-dirty ms of the snapshots of `index_slot` in flight."""
    return f"{{{_work_tags()[index_slot]}}}:snaps"


def unit_work_keys(unit: str, per_slot: bool) -> tuple[str, str]:
    """(work index, snapshots index) of the slot that holds `unit`."""
    index_slot = work_slot(unit, per_slot)
    return work_key(index_slot), snaps_key(index_slot)
