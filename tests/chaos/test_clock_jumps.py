"""The api's clock jumps back one hour, then forward one day, then back to the true time, while
hits flow (libfaketime preloaded into the api process, its offset changed through a file while
it runs; only the wall clock jumps, as an NTP step would: the monotonic clock that timeouts
use does not).

What must hold (docs/durability.md, "Clock jumps"): no hit lost or counted twice; every hit
filed under the local day of the api's clock when it took it; the dedupe window is Redis'
(a mark expires by Redis' clock), but the visitor tokens follow the api's UTC day, so a jump
into another UTC day counts a visitor again while a jump inside the day does not. Redis,
Postgres and the flusher keep the true time (leases are Redis TTLs; the api holds none)."""

from __future__ import annotations

import glob
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.cli.localredis import RedisProcess
from tests.support import chaos
from tests.support.checks import fetch
from tests.support.stack import ADMIN, SITE, make_settings, register_site

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]
# Debian's libfaketime (apt-get install libfaketime); the MT build is the thread-safe one.
LIBFAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/*/faketime/libfaketime.so.1",
)
HOUR_S = 3600
DAY_S = 86400
# The api's clock offset in each phase, in order: true time, back 1 h, forward 1 day, true.
PHASES = (("true time", 0), ("back 1 h", -HOUR_S), ("forward 1 day", DAY_S), ("back to true", 0))
MARKER_HITS = 40  # sequential hits per phase on that phase's own page
DEDUPE_SITE = "clockdd"
DEDUPE_WINDOW_S = 3600


def libfaketime() -> str:
    """Path of libfaketime; skip (fail under CI) when it is not installed."""
    for pattern in LIBFAKETIME_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    if os.environ.get("CI"):
        pytest.fail("libfaketime is missing under CI (.ci/run installs Debian's libfaketime)")
    pytest.skip("libfaketime not installed (apt-get install libfaketime faketime)")


def zone_near_midnight(now: float) -> str:
    """A whole-hour time zone whose local time is now in the first hour after midnight: the
    hour before is then another local day, so a jump back one hour changes the day."""
    hours = (-datetime.fromtimestamp(now, UTC).hour) % 24
    if hours > 14:
        hours -= 24
    # POSIX signs: Etc/GMT-7 is UTC+7.
    return "Etc/UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"


def local_day(at: float, zone: str) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).date().isoformat()


def set_offset(control: Path, offset_s: int) -> None:
    """Move the api's clock to true time + `offset_s` (libfaketime re-reads this file on
    every call with FAKETIME_NO_CACHE=1); written whole, then renamed into place."""
    part = control.with_suffix(".part")
    part.write_text(f"{offset_s:+d}\n")
    part.replace(control)


async def test_api_clock_jumps_while_hits_flow_count_each_hit_once_on_its_clock_day(
    own_redis: Callable[..., RedisProcess], database_url: str, tmp_path: Path
) -> None:
    preload = libfaketime()
    server = own_redis(appendfsync="always")
    settings = make_settings(server.url, database_url, flush_interval=0.1)
    zone = zone_near_midnight(time.time())
    control = tmp_path / "faketime"
    set_offset(control, 0)
    faked = {
        "LD_PRELOAD": preload,
        "FAKETIME_TIMESTAMP_FILE": str(control),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    expected: dict[str, Counter[str]] = {}  # marker page -> local day -> hits acknowledged
    ambiguous = 0  # marker hits taken across a local midnight (either day is right)
    dedupe: dict[str, list[bool]] = {}  # phase -> `counted` of the same visitor's two hits
    utc_days: dict[str, str] = {}
    api_log = tmp_path / "api.log"
    with chaos.api_process(settings, api_log, workers=1, **faked) as (api, port):
        async with chaos.browser_client(port, timeout=10, connections=16, keepalive=16) as client:
            await chaos.until_ready(client, "the api")
            await register_site(client, SITE, zone)
            answer = await client.put(
                f"/v1/sites/{DEDUPE_SITE}",
                json={"timezone": zone, "dedupe_window": DEDUPE_WINDOW_S},
                headers=ADMIN,
            )
            assert answer.status_code in (200, 201), answer.text
            flow = chaos.Load(client, SITE, pages=20, seed=31)
            markers = chaos.Load(client, SITE, pages=1, seed=32)
            flusher_log = tmp_path / "flusher.log"
            with chaos.sampled_with_flusher(settings, [flow, markers], flusher_log) as (
                sampler,
                flusher,
            ):
                async with flow.flowing(clients=4):
                    for phase, offset in PHASES:
                        set_offset(control, offset)
                        page = f"phase {phase}"
                        days = expected.setdefault(page, Counter())
                        for _ in range(MARKER_HITS):
                            before = time.time() + offset
                            body = await markers.one(page)
                            after = time.time() + offset
                            if body is None:
                                continue
                            day = local_day(before, zone)
                            if day == local_day(after, zone):
                                days[day] += 1
                            else:
                                ambiguous += 1
                        utc_days[phase] = (
                            datetime.fromtimestamp(time.time() + offset, UTC).date().isoformat()
                        )
                        dedupe[phase] = [
                            bool((await _dedupe_hit(client)).get("counted")) for _ in range(2)
                        ]
                        await flow.more_acked(100)
                    set_offset(control, 0)
                assert await chaos.stop_gracefully(flusher) == 0
            await chaos.stop_gracefully(api, 40)

    daily = await fetch(
        database_url,
        "SELECT page, day::text AS day, views FROM page_views_daily WHERE site = $1 "
        "AND page LIKE 'phase %'",
        SITE,
    )
    filed: dict[str, Counter[str]] = {}
    for row in daily:
        filed.setdefault(row["page"], Counter())[row["day"]] += row["views"]
    days_seen = sorted({day for days in expected.values() for day in days})
    result = await chaos.final_report(
        "api clock back 1 h, forward 1 day, back (libfaketime)",
        database_url,
        [flow, markers],
        sampler,
        notes=f"site zone {zone}; marker hits filed under local days {days_seen}; "
        f"{ambiguous} across a midnight; dedupe by phase {dedupe}",
    )
    result.assert_exact()
    assert markers.unknown_total == 0 and flow.unknown_total == 0
    # Each phase's hits are under the local day of the api's clock when it took them, and
    # the jumps did happen: a day ahead holds the third phase's hits, none of the first's.
    for page, days in expected.items():
        got = filed.get(page, Counter())
        if ambiguous == 0:
            assert got == days, (page, got, days)
        else:
            assert sum(got.values()) >= sum(days.values()), (page, got, days)
    assert not set(expected["phase forward 1 day"]) & set(expected["phase true time"])
    assert set(expected["phase back to true"]) <= set(expected["phase true time"]) | {
        local_day(time.time(), zone)
    }
    # Dedupe: the second hit of the same visitor is a duplicate within the window. The window
    # runs on the api's clock (a mark is kept under its generation of that clock): an hour
    # back is two 30-minute generations away, so the visitor counts once more there, once;
    # back on the true time, the first phase's mark applies again.
    assert dedupe["true time"] == [True, False]
    assert dedupe["back 1 h"] == [True, False]
    assert dedupe["forward 1 day"] == [True, False]
    assert dedupe["back to true"] == [False, False]


async def _dedupe_hit(client: httpx.AsyncClient) -> dict[str, object]:
    """One hit of the same visitor on the same page of the dedupe site."""
    answer = await client.post(
        f"/v1/sites/{DEDUPE_SITE}/hits", json={"page": "same", "visitor": "reader-1"}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body
