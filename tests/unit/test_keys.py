"""The Redis key schema (services/counter/keys.py): hash tags, units, buckets, pending shards
and fields, and the keys the flusher parses back. A changed name or hash strands live data, so
the values that are stored are pinned here."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from services.counter import ids, keys
from services.counter.ids import PAGE_ID_MAX_BYTES, SITE_ID_MAX_CHARS

pytestmark = pytest.mark.unit

VIETNAMESE_SLUG = "tin-tức/phát-huy-vai-trò-123"
HOSTILE_PAGE = "'; DROP TABLE page_views; --"
SITE = "quan11"


def _hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text inside the first {...}, when not empty."""
    start = key.find("{")
    end = key.find("}", start + 1)
    assert start != -1 and end > start + 1, key
    return key[start + 1 : end]


@pytest.mark.parametrize("site", ["quan11", "a", "my_site-2", "a" * SITE_ID_MAX_CHARS])
def test_every_key_of_a_site_shares_its_hash_tag_and_slot(site: str) -> None:
    site_keys = [
        keys.site_key(site),
        *(keys.page_entry(site, page)[0] for page in ("a", "b", VIETNAMESE_SLUG)),
        *(keys.pending_key(site, shard) for shard in range(keys.PENDING_SHARDS)),
        *(keys.snapshot_key(site, shard, "0001700000000-ab12-7") for shard in range(3)),
    ]
    assert keys.tag(site) == f"{{vc:{site}}}"
    assert all(key.startswith(keys.tag(site) + ":") for key in site_keys)
    assert {_hash_tag(key) for key in site_keys} == {f"vc:{site}"}
    assert len({key_slot(key.encode()) for key in site_keys}) == 1
    assert len(set(site_keys)) >= len(site_keys) - 2  # pages may share a bucket


def test_keys_of_different_sites_never_coincide() -> None:
    assert keys.site_key("a") != keys.site_key("a-")
    assert keys.page_entry("quan1", "a") != keys.page_entry("quan11", "a")


@pytest.mark.parametrize(
    ("page", "bucket"), [("a", 569), (VIETNAMESE_SLUG, 1005), ("'; DROP TABLE page_views; --", 875)]
)
def test_the_bucket_of_a_page_is_pinned_across_releases(page: str, bucket: int) -> None:
    # A page's live total lives in this bucket under this field; changing either strands it.
    key, field = keys.page_entry("quan11", page)
    assert key == f"{{vc:quan11}}:pages:{bucket}"
    assert len(field) == keys.PAGE_FIELD_BYTES


def test_pages_spread_over_the_buckets() -> None:
    buckets = {keys.page_entry("s", f"article-{n}")[0] for n in range(20_000)}
    assert len(buckets) == keys.PAGE_BUCKETS


@pytest.mark.parametrize(
    ("page", "shard"), [("a", 3), (VIETNAMESE_SLUG, 6), ("'; DROP TABLE page_views; --", 7)]
)
def test_shard_of_a_page_is_pinned_across_releases(page: str, shard: int) -> None:
    # Pending deltas of a page live in this shard; changing the hash strands them.
    assert keys.shard_of(page) == shard


def test_pages_spread_over_every_pending_shard() -> None:
    shards = {keys.shard_of(f"article-{n}") for n in range(200)}
    assert shards == set(range(keys.PENDING_SHARDS))


@pytest.mark.parametrize("site", ["quan11", "a", "my_site-2", "a" * SITE_ID_MAX_CHARS])
def test_pending_key_round_trips(site: str) -> None:
    for shard in range(keys.PENDING_SHARDS):
        assert keys.parse_pending_key(keys.pending_key(site, shard)) == site


@pytest.mark.parametrize(
    "key",
    [
        keys.site_key("quan11"),
        keys.page_entry("quan11", "p")[0],
        keys.snapshot_key("quan11", 1, "b"),
        "{vc:quan11}:pend:",
        "{vc:quan11}:pend:x",
        "{other:quan11}:pend:1",
        "vc:quan11:pend:1",
        "",
    ],
)
def test_other_keys_do_not_parse_as_pending(key: str) -> None:
    assert keys.parse_pending_key(key) is None


@pytest.mark.parametrize("batch", ["0001700000000-ab12-7", "b", "with:colons:in:it"])
def test_snapshot_key_round_trips(batch: str) -> None:
    for shard in range(keys.PENDING_SHARDS):
        key = keys.snapshot_key("my_site-2", shard, batch)
        assert keys.parse_snapshot_key(key) == ("my_site-2", shard, batch)


@pytest.mark.parametrize(
    "key",
    [
        keys.pending_key("quan11", 1),
        keys.site_key("quan11"),
        "{vc:quan11}:snap:1",
        "{vc:quan11}:snap:1:",
        "{vc:quan11}:snap:x:b",
        "{other:quan11}:snap:1:b",
        "",
    ],
)
def test_other_keys_do_not_parse_as_snapshot(key: str) -> None:
    assert keys.parse_snapshot_key(key) is None


@pytest.mark.parametrize("page", ["}:snap:1:b", "x}:pend:1", "}:pend:1", ":snap:1:b"])
def test_no_page_id_makes_a_visitor_sketch_look_like_flusher_work(page: str) -> None:
    key = keys.page_visitors_key("quan11", "2026-01-01", page)
    assert keys.parse_snapshot_key(key) is None
    assert keys.parse_pending_key(key) is None


@pytest.mark.parametrize(
    "page",
    [
        "a",
        "a:b",
        ":",
        "{vc:quan11}:site",
        "}{",
        "2024-01-01",
        VIETNAMESE_SLUG,
        "ứ" * (PAGE_ID_MAX_BYTES // 3),
    ],
)
def test_pending_field_round_trips_any_page(page: str) -> None:
    field = keys.pending_field("2024-12-31", page)
    assert keys.split_pending_field(field) == ("2024-12-31", page)
    assert len("2024-12-31") == keys.DAY_CHARS


# --- units


def test_unit_zero_is_the_site_and_the_others_carry_their_number() -> None:
    assert keys.unit(SITE, 0) == SITE
    assert keys.unit(SITE, 1) == f"{SITE}~1"
    assert keys.units(SITE, 1) == [SITE]
    assert keys.units(SITE, 3) == [SITE, f"{SITE}~1", f"{SITE}~2"]


@pytest.mark.parametrize("site", ["quan11", "a", "my_site-2", "a" * SITE_ID_MAX_CHARS])
def test_every_unit_names_its_site(site: str) -> None:
    assert [keys.site_of(u) for u in keys.units(site, 16)] == [site] * 16


def test_no_site_id_contains_the_unit_mark() -> None:
    # Else "a~1" could be both unit 1 of "a" and unit 0 of a site "a~1".
    with pytest.raises(ids.InvalidId):
        ids.site_id(f"a{keys.UNIT_MARK}1")


def test_every_key_of_a_unit_carries_the_units_own_tag() -> None:
    unit = keys.unit(SITE, 5)
    unit_keys = [
        keys.site_key(unit),
        keys.page_entry(unit, "a")[0],
        keys.pending_key(unit, 0),
        keys.snapshot_key(unit, 7, "b-1"),
        keys.lease_key(unit),
        *keys.seen_entry(unit, "ab" * 12, 1800, 7)[:2],
        keys.seen_off_key(unit),
        keys.rate_key(unit, "t", 1),
        keys.site_visitors_key(unit, "2026-01-01"),
        keys.page_visitors_key(unit, "2026-01-01", "a"),
        *keys.visitors_merge_keys(unit),
        keys.idempotency_key(unit, "t"),
    ]
    assert {_hash_tag(key) for key in unit_keys} == {f"vc:{SITE}~5"}
    assert len({key_slot(key.encode()) for key in unit_keys}) == 1
    assert len(set(unit_keys)) == len(unit_keys)


def test_the_units_of_a_site_spread_over_cluster_slots() -> None:
    slots = {key_slot(keys.site_key(u).encode()) for u in keys.units(SITE, 16)}
    assert len(slots) == 16


@pytest.mark.parametrize(
    ("page", "of_16", "of_4"), [("a", 8, 0), (VIETNAMESE_SLUG, 9, 1), (HOSTILE_PAGE, 8, 0)]
)
def test_the_unit_of_a_page_is_pinned_across_releases(page: str, of_16: int, of_4: int) -> None:
    # A page's counts live in this unit; changing the hash strands them.
    assert (keys.unit_index(page, 16), keys.unit_index(page, 4)) == (of_16, of_4)


def test_one_unit_holds_every_page() -> None:
    assert {keys.unit_index(f"article-{n}", 1) for n in range(100)} == {0}


def test_the_pages_of_a_site_spread_over_its_units() -> None:
    pages = [f"/tin-tuc/{n}" for n in range(24)]
    count = 4
    units = {keys.unit(SITE, keys.unit_index(p, count)) for p in pages}
    assert units == set(keys.units(SITE, count))
    assert {keys.site_of(u) for u in keys.units(SITE, 3)} == {SITE}
    # The flusher reads the unit back from the keys it finds.
    snapshot = keys.snapshot_key(keys.unit(SITE, 3), 5, "b-1")
    assert keys.parse_snapshot_key(snapshot) == (f"{SITE}~3", 5, "b-1")
    assert keys.parse_pending_key(keys.pending_key(keys.unit(SITE, 3), 0)) == f"{SITE}~3"
    # A unit's pages still use every pending shard of it (other bits of the hash).
    assert len({keys.shard_of(p) for p in pages if keys.unit_index(p, count) == 0}) > 1
    first_unit = [f"article-{n}" for n in range(400) if keys.unit_index(f"article-{n}", 16) == 0]
    assert {keys.shard_of(p) for p in first_unit} == set(range(keys.PENDING_SHARDS))


# --- page entries


@pytest.mark.parametrize(
    ("page", "field"),
    [
        ("a", "40f89e395b66422f"),
        (VIETNAMESE_SLUG, "7b69cbedf37f8a9d"),
        (HOSTILE_PAGE, "ea4ddb6b214f8281"),
    ],
)
def test_the_field_of_a_page_is_pinned_across_releases(page: str, field: str) -> None:
    assert keys.page_entry(SITE, page)[1].hex() == field


def test_a_page_has_the_same_bucket_and_field_in_every_unit() -> None:
    (key0, field0), (key3, field3) = keys.page_entry(SITE, "a"), keys.page_entry(f"{SITE}~3", "a")
    assert field0 == field3
    assert key0.rsplit(":", 1)[1] == key3.rsplit(":", 1)[1]
    assert key0 != key3


def test_the_longest_page_gets_a_short_field() -> None:
    key, field = keys.page_entry(SITE, "ứ" * (PAGE_ID_MAX_BYTES // 3))
    assert len(field) == keys.PAGE_FIELD_BYTES
    assert 0 <= int(key.rsplit(":", 1)[1]) < keys.PAGE_BUCKETS


@pytest.mark.parametrize("unit", ["quan11", "quan11~3", "a"])
def test_legacy_pages_key_round_trips(unit: str) -> None:
    assert keys.parse_legacy_pages_key(keys.legacy_pages_key(unit)) == unit


@pytest.mark.parametrize(
    "key", [keys.site_key("quan11"), keys.page_entry("quan11", "p")[0], "{vc:}:pages", "", "x"]
)
def test_other_keys_do_not_parse_as_legacy_pages(key: str) -> None:
    assert keys.parse_legacy_pages_key(key) is None


# --- per-minute and per-day keys


def test_rate_keys_change_with_the_minute_and_the_client() -> None:
    assert keys.rate_key(SITE, "t", 1) != keys.rate_key(SITE, "t", 2)
    assert keys.rate_key(SITE, "t", 1) != keys.rate_key(SITE, "u", 1)
    assert keys.admin_rate_key("t", 1) != keys.admin_rate_key("t", 2)
    assert keys.salt_key("2026-01-01") != keys.salt_key("2026-01-02")


def test_every_pending_field_day_has_the_day_width() -> None:
    assert len(keys.pending_field("2026-01-01", "")) == keys.DAY_CHARS


def test_each_cluster_slot_has_work_index_keys_on_that_slot() -> None:
    from redis.crc import key_slot

    for slot in range(keys.CLUSTER_SLOTS):
        assert key_slot(keys.work_key(slot).encode()) == slot
        assert key_slot(keys.snaps_key(slot).encode()) == slot
    for unit in ("quan11", "quan11~3", "a-site~1023"):
        work, snaps = keys.unit_work_keys(unit, per_slot=True)
        assert key_slot(work.encode()) == key_slot(snaps.encode())
        assert key_slot(work.encode()) == key_slot(keys.site_key(unit).encode())
    # A single Redis: every unit's work in index slot 0.
    assert keys.unit_work_keys("quan11~3", per_slot=False) == (keys.work_key(0), keys.snaps_key(0))
