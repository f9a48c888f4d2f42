"""KEYS and ARGV of the hits.lua call, built without a server (lua/hits.lua's header)."""

from __future__ import annotations

import dataclasses

import pytest
from redis.crc import key_slot

from services.counter import calls, keys, scripts
from services.counter.outcomes import HitRequest, PageRule

pytestmark = pytest.mark.unit

SITE = "quan11"
DAY = "2026-01-01"
MINUTE = 29_000_000
TIME_S = MINUTE * 60 + 17  # the 17th second of MINUTE
SEEN = "00004001" + "0102030405060708"  # a seen token (hex): shard 16385 % 16384, then the mark


def request(page: str, rule: PageRule) -> HitRequest:
    return HitRequest(SITE, page, DAY, SEEN, 1800, "client", TIME_S, 600, rule, "v")


def test_one_hit_on_a_site_of_one_unit() -> None:
    script, numkeys, argv = calls.hits_call(SITE, [request("/a", PageRule.at_most(10))])
    bucket, field = keys.page_entry(SITE, "/a")
    assert script is scripts.HITS
    assert numkeys == 20
    generation, at = divmod(TIME_S, 1800)
    assert argv[:numkeys] == [
        "{vc:quan11}:site",
        *(f"{{vc:quan11}}:pend:{shard}" for shard in range(8)),
        "{vc:quan11}:idem:-",
        "{vc:quan11}:days",
        "{vc:quan11}:pend:titles",
        f"{{vc:quan11}}:seen:1800:{generation}:1",
        "{vc:quan11}:rate:client:29000000",
        f"{{vc:quan11}}:uv:{DAY}",
        f"{{vc:quan11}}:uvp:{DAY}:/a",
        bucket,
        "{vc:quan11}:on:29000000",
        f"{{vc:quan11}}:seen:1800:{generation - 1}:1",
        keys.work_key(0),  # a single Redis: every unit's work in index slot 0
    ]
    # The online sketches outlive the default 300 s window by two minutes.
    assert argv[numkeys:] == [
        0, 420, keys.shard_of("/a"), "/a", DAY, 1800, 600, 10, "v", field, "",
        bytes(range(1, 9)), at,
    ]  # fmt: skip


def test_a_hit_without_a_dedupe_window_names_no_mark() -> None:
    hit = dataclasses.replace(request("/a", PageRule.any_page()), seen_token="-", dedupe_window_s=0)
    _, numkeys, argv = calls.hits_call(SITE, [hit])
    assert argv[12] == argv[18] == "{vc:quan11}:seen:off"
    assert argv[numkeys:][-2:] == [b"", 0]


def test_the_dedupe_generation_is_the_window_and_the_second_within_it() -> None:
    assert keys.seen_generation(3600 * 1000 + 1799, 1800) == (2000, 1799)
    assert keys.seen_generation(3600 * 1000 + 1800, 1800) == (2001, 0)


def test_several_hits_of_one_unit_of_a_split_site_are_one_idempotent_call() -> None:
    units = 4
    pages = [
        p for p in (f"/p{i}" for i in range(40)) if calls.unit_of(SITE, p, units) == "quan11~1"
    ]
    hits = [request(p, PageRule.at_most(10)) for p in pages[:3]]
    _, numkeys, argv = calls.hits_call("quan11~1", hits, units, "tok:u0:0", 86400)
    assert numkeys == 12 + 7 * 3 + 1
    assert argv[0] == "{vc:quan11~1}:site"
    assert argv[9] == "{vc:quan11~1}:idem:tok:u0:0"
    assert argv[10] == "{vc:quan11~1}:days"
    assert all(key.startswith("{vc:quan11~1}:") for key in argv[: numkeys - 1])
    assert argv[numkeys - 1] == keys.work_key(0)
    # On a Cluster, the work index key is on the unit's own slot: one slot per call.
    _, n_cluster, on_cluster = calls.hits_call("quan11~1", hits, units, per_slot=True)
    assert len({key_slot(str(key).encode()) for key in on_cluster[:n_cluster]}) == 1
    args = argv[numkeys:]
    assert args[:2] == [86400, 420]
    for j, page in enumerate(pages[:3]):
        per_hit = args[2 + 11 * j : 13 + 11 * j]
        # The page bound of 10 becomes this unit's share: 3 of 4 units, rounded up.
        assert per_hit[:7] == [keys.shard_of(page), page, DAY, 1800, 600, 3, "v"]
        assert per_hit[7] == keys.page_entry("quan11~1", page)[1]
        assert per_hit[8] == ""  # no title to learn
        assert per_hit[9:] == [bytes(range(1, 9)), TIME_S % 1800]


def test_unit_zero_is_the_site_itself() -> None:
    assert calls.unit_of(SITE, "/any", 1) == SITE
    assert {calls.unit_of(SITE, f"/p{i}", 4) for i in range(200)} == {
        SITE,
        "quan11~1",
        "quan11~2",
        "quan11~3",
    }


def test_a_title_to_learn_is_the_ninth_value_of_its_hit() -> None:
    hit = dataclasses.replace(request("/a", PageRule.any_page()), title="Tin tức")
    _, numkeys, argv = calls.hits_call(SITE, [hit])
    assert argv[11] == "{vc:quan11}:pend:titles"
    assert argv[numkeys:][2 + 8] == "Tin tức"
