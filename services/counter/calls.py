"""The KEYS and ARGV of the scripts' calls, built from typed values (no server needed).

Each builder follows the header of its script (lua/*.lua); nothing outside this package
sees KEYS or ARGV.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.counter import keys, scripts
from services.counter.outcomes import HitRequest
from services.counter.scripts import Call

# The default online window (VIEWCOUNTER_ONLINE_WINDOW), in seconds: a whole number of minutes.
ONLINE_WINDOW_S = 300


def online_ttl_s(window_s: int) -> int:
    """How long an online sketch lives after its first visitor: the reads that count its
    minute end up to window + 60 s after the minute began; a minute's margin on top."""
    return window_s + 120


def online_minutes(minute: int, window_s: int) -> list[int]:
    """The clock minutes whose sketches a read in `minute` counts: the current one and the
    window's whole minutes before it, so the window spans between W and W + 60 s."""
    return list(range(minute - window_s // 60, minute + 1))


def unit_of(site: str, page: str, units: int) -> str:
    """The unit of `site` (split over `units`) that counts `page`."""
    return site if units == 1 else keys.unit(site, keys.unit_index(page, units))


def hits_call(
    unit: str,
    requests: Sequence[HitRequest],
    units: int = 1,
    idempotency_token: str = "-",
    keep_s: int = 0,
    online_window_s: int = ONLINE_WINDOW_S,
    per_slot: bool = False,
) -> Call:
    """One hits.lua call taking `requests` (all of one `unit` of a site split over `units`);
    with `keep_s`, idempotent under `idempotency_token` for that long; its visitors' online
    marks kept for `online_window_s`; its work recorded in the work index of its Cluster slot
    (`per_slot`: on a Redis Cluster) or of slot 0.

    Split over several units, a site's page bound applies per unit as its share (rounded
    up), and a client's rate limit per unit: a unit cannot see the others' counts.
    """
    key_list = [keys.site_key(unit)]
    key_list.extend(keys.pending_key(unit, shard) for shard in range(keys.PENDING_SHARDS))
    key_list.append(keys.idempotency_key(unit, idempotency_token))
    key_list.append(keys.days_key(unit))
    key_list.append(keys.titles_key(unit))
    args: list[str | int | bytes] = [keep_s, online_ttl_s(online_window_s)]
    minute, online_key = -1, ""
    for r in requests:
        if r.minute != minute:  # a call's hits nearly always share their minute
            minute, online_key = r.minute, keys.online_key(unit, r.minute)
        bucket, field = keys.page_entry(unit, r.page)
        if r.dedupe_window_s:
            generation, at = keys.seen_generation(r.time_s, r.dedupe_window_s)
            marks, marks_before, mark = keys.seen_entry(
                unit, r.seen_token, r.dedupe_window_s, generation
            )
        else:  # no dedupe: the script touches neither key
            marks = marks_before = keys.seen_off_key(unit)
            mark, at = b"", 0
        key_list.extend(
            (
                marks,
                keys.rate_key(unit, r.client_token, r.minute),
                keys.site_visitors_key(unit, r.day),
                keys.page_visitors_key(unit, r.day, r.page),
                bucket,
                online_key,
                marks_before,
            )
        )
        args.extend(
            (
                keys.shard_of(r.page),
                r.page,
                r.day,
                r.dedupe_window_s,
                r.rate_limit,
                r.page_rule.lua_arg(units),
                r.visitor_token,
                field,
                r.title,
                mark,
                at,
            )
        )
    key_list.append(keys.unit_work_keys(unit, per_slot)[0])  # last: hits.lua's KEYS[#KEYS]
    return (scripts.HITS, len(key_list), [*key_list, *args])


def pages_call(
    script: scripts.Script,
    unit: str,
    head: Sequence[str | int],
    pages: Sequence[str],
    values: Sequence[int] | None = None,
) -> Call:
    """A call of a script taking the unit hash and a bucket per page as KEYS, and `head`,
    then each page's field (followed by its value, with `values`) as ARGV (load_pages,
    set_config, apply_baseline)."""
    key_list = [keys.site_key(unit)]
    argv: list[str | int | bytes] = [*head]
    for i, page in enumerate(pages):
        bucket, field = keys.page_entry(unit, page)
        key_list.append(bucket)
        argv.append(field)
        if values is not None:
            argv.append(values[i])
    return (script, len(key_list), [*key_list, *argv])


def counts_call(unit: str, day: str, pages: Sequence[str]) -> Call:
    """One counts.lua call reading the unit's part of the site total and its visitors on
    `day`, and each page's total and visitors."""
    key_list = [keys.site_key(unit), keys.site_visitors_key(unit, day)]
    fields: list[bytes] = []
    for page in pages:
        bucket, field = keys.page_entry(unit, page)
        key_list.extend((bucket, keys.page_visitors_key(unit, day, page)))
        fields.append(field)
    return (scripts.COUNTS, len(key_list), [*key_list, *fields])


def stats_call(unit: str, minutes: Sequence[int], days: Sequence[str]) -> Call:
    """One stats.lua call reading the unit's part of the site total, its visitors online in
    `minutes` and its views on each of `days`."""
    key_list = [keys.site_key(unit), keys.days_key(unit)]
    key_list.extend(keys.online_key(unit, m) for m in minutes)
    return (scripts.STATS, len(key_list), [*key_list, *days])


def fill_days_call(unit: str, generation: str, postgres_days: Mapping[str, int]) -> Call:
    """One fill_days.lua call: the unit's days hash set to Postgres' part of each day plus
    the unit's pending deltas of that day, unless it is exact already."""
    key_list = [keys.site_key(unit), keys.days_key(unit)]
    key_list.extend(keys.pending_key(unit, shard) for shard in range(keys.PENDING_SHARDS))
    args: list[str | int] = [generation, keys.DAYS_FILLED]
    for day, views in sorted(postgres_days.items()):
        args.extend((day, views))
    return (scripts.FILL_DAYS, len(key_list), [*key_list, *args])


def prune_days_call(unit: str, oldest_day: str) -> Call:
    """One prune_days.lua call: drop the unit's days before `oldest_day`; answers whether
    the days hash is exact (its DAYS_FILLED marker is there)."""
    return (scripts.PRUNE_DAYS, 1, [keys.days_key(unit), oldest_day, keys.DAYS_FILLED])
