"""The statistics block without a server: the local days of each period, the block built
from them, and the KEYS and ARGV of its scripts' calls (lua/stats.lua, fill_days.lua,
prune_days.lua headers)."""

from __future__ import annotations

from datetime import date

import pytest

from services.counter import calls, keys, scripts
from services.counter.stats import LiveStats, oldest_day_kept
from services.counting.stats import Periods, Stats

pytestmark = pytest.mark.unit


def test_a_wednesday_mid_month() -> None:
    p = Periods(date(2026, 5, 13))
    assert p.yesterday == date(2026, 5, 12)
    assert p.week == ["2026-05-11", "2026-05-12", "2026-05-13"]
    assert p.month == [f"2026-05-{d:02d}" for d in range(1, 14)]
    assert p.days == p.month


def test_the_first_of_the_month_on_a_sunday_reaches_back_to_monday() -> None:
    p = Periods(date(2026, 3, 1))  # a Sunday
    assert p.month == ["2026-03-01"]
    assert p.week == ["2026-02-23", *(f"2026-02-{d}" for d in range(24, 29)), "2026-03-01"]
    assert p.days == p.week
    assert p.yesterday == date(2026, 2, 28)


def test_a_monday_the_first_of_january() -> None:
    p = Periods(date(2029, 1, 1))  # a Monday
    assert (p.week, p.month) == (["2029-01-01"], ["2029-01-01"])
    assert p.days == ["2028-12-31", "2029-01-01"]  # yesterday, in last year


def test_the_last_day_of_a_long_month_needs_31_days_at_most() -> None:
    assert len(Periods(date(2026, 5, 31)).days) == 31
    assert max(len(Periods(date(2026, 1, d)).days) for d in range(1, 32)) == 31


def test_the_block_sums_each_period_from_the_days() -> None:
    p = Periods(date(2026, 5, 4))  # Monday the 4th
    views = {"2026-04-30": 100, "2026-05-01": 1, "2026-05-02": 2, "2026-05-03": 4, "2026-05-04": 8}
    block = Stats.of("Asia/Ho_Chi_Minh", p, LiveStats(site_views=999, online=5, days=views))
    assert block.as_dict() == {
        "timezone": "Asia/Ho_Chi_Minh", "day": "2026-05-04", "online": 5, "today": 8,
        "yesterday": 4, "this_week": 8, "this_month": 15, "total": 999,
    }  # fmt: skip


def test_the_online_window_is_its_minutes_and_the_current_one() -> None:
    assert calls.online_minutes(1000, 300) == [995, 996, 997, 998, 999, 1000]
    assert calls.online_minutes(1000, 60) == [999, 1000]
    # A sketch outlives the last read that counts it (W + 60 s after its minute began).
    assert calls.online_ttl_s(300) == 420


def test_a_stats_call_reads_one_unit_in_one_slot() -> None:
    script, numkeys, argv = calls.stats_call("quan11~2", [7, 8], ["2026-05-03", "2026-05-04"])
    assert script is scripts.STATS
    assert argv[:numkeys] == [
        "{vc:quan11~2}:site", "{vc:quan11~2}:days", "{vc:quan11~2}:on:7", "{vc:quan11~2}:on:8",
    ]  # fmt: skip
    assert argv[numkeys:] == ["2026-05-03", "2026-05-04"]


def test_the_fill_and_prune_calls() -> None:
    script, numkeys, argv = calls.fill_days_call(
        "quan11", "gen1", {"2026-05-04": 3, "2026-05-01": 2}
    )
    assert script is scripts.FILL_DAYS
    assert argv[:numkeys] == [
        "{vc:quan11}:site",
        "{vc:quan11}:days",
        *(keys.pending_key("quan11", k) for k in range(keys.PENDING_SHARDS)),
    ]
    assert argv[numkeys:] == ["gen1", "filled", "2026-05-01", 2, "2026-05-04", 3]
    assert calls.prune_days_call("quan11", "2026-03-25") == (
        scripts.PRUNE_DAYS, 1, ["{vc:quan11}:days", "2026-03-25", "filled"],
    )  # fmt: skip


def test_days_are_kept_forty_days_back_from_utc() -> None:
    assert oldest_day_kept(1_777_852_800) == date(2026, 3, 25)  # 4 May 2026 00:00 UTC
