"""Site and page id validation, and the Redis key schema built on them."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from services.counter import ids, keys
from services.counter.ids import PAGE_ID_MAX_BYTES, SITE_ID_MAX_CHARS, InvalidId

VIETNAMESE_SLUG = "tin-tức/phát-huy-vai-trò-123"
NOT_PRINTABLE = "must not contain control or other non-printable characters"


def refusal(raw: object, check: Callable[[object], str] = ids.page_id) -> InvalidId:
    with pytest.raises(InvalidId) as caught:
        check(raw)
    return caught.value


# --- page ids


@pytest.mark.parametrize(
    "slug",
    [
        VIETNAMESE_SLUG,
        "Quận 11: Hội nghị tổng kết năm 2024",
        "đường-3/2/khánh-thành",
        "Ủy-ban-nhân-dân-quận-11",
        "123",
        "/",
        "a b",
    ],
)
def test_vietnamese_and_plain_slugs_are_accepted_unchanged(slug: str) -> None:
    assert ids.page_id(slug) == slug


def test_nfd_spelling_is_normalised_to_nfc() -> None:
    nfd = unicodedata.normalize("NFD", VIETNAMESE_SLUG)
    assert nfd != VIETNAMESE_SLUG
    assert ids.page_id(nfd) == VIETNAMESE_SLUG


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  a  ", "a"),
        ("\t\r\na\r\n", "a"),
        ("\u3000a\u00a0", "a"),
        (" a b ", "a b"),
    ],
)
def test_surrounding_whitespace_is_trimmed_and_inner_spaces_kept(raw: str, expected: str) -> None:
    assert ids.page_id(raw) == expected


@pytest.mark.parametrize("raw", ["", " ", "\t\n", "\u3000", "\u00a0 \u2003"])
def test_empty_or_whitespace_only_page_is_refused(raw: str) -> None:
    err = refusal(raw)
    assert (err.field, err.message) == ("page", "must not be empty")


def test_page_of_exactly_max_bytes_is_accepted() -> None:
    ascii_page = "a" * PAGE_ID_MAX_BYTES
    wide_page = "ứ" * (PAGE_ID_MAX_BYTES // 3) + "a" * (PAGE_ID_MAX_BYTES % 3)
    assert len(wide_page.encode()) == PAGE_ID_MAX_BYTES
    assert ids.page_id(ascii_page) == ascii_page
    assert ids.page_id(wide_page) == wide_page


@pytest.mark.parametrize(
    "raw",
    ["a" * (PAGE_ID_MAX_BYTES + 1), "ứ" * (PAGE_ID_MAX_BYTES // 3) + "a" * 3, "👍" * 129],
)
def test_page_one_byte_over_max_is_refused(raw: str) -> None:
    assert len(raw.encode()) > PAGE_ID_MAX_BYTES
    err = refusal(raw)
    assert err.message == f"must be at most {PAGE_ID_MAX_BYTES} bytes of UTF-8"


def test_length_is_measured_after_nfc_and_trimming() -> None:
    page = "ứ" * (PAGE_ID_MAX_BYTES // 3)
    nfd = "  " + unicodedata.normalize("NFD", page) + "  "
    assert len(nfd.encode()) > PAGE_ID_MAX_BYTES
    assert ids.page_id(nfd) == page


@pytest.mark.parametrize(
    "raw",
    [
        "a\x00b",
        "a\nb",
        "a\tb",
        "\x1b[31mred",
        "a\x7fb",
        "a\x85b",
        "a\u200bb",  # zero-width space, category Cf
        "a\u202eb",  # right-to-left override
        "a\u2028b",  # line separator
        "a\ufeffb",  # byte order mark
        "a\ue000b",  # private use
        "a\U000e0001b",  # language tag
    ],
)
def test_control_and_invisible_characters_are_refused(raw: str) -> None:
    err = refusal(raw)
    assert (err.field, err.message) == ("page", NOT_PRINTABLE)


@pytest.mark.parametrize("raw", ["\ud800", "a\udfffb", "\udc80\ud800"])
def test_lone_surrogates_are_refused_as_not_utf8(raw: str) -> None:
    err = refusal(raw)
    assert (err.field, err.message) == ("page", "must be valid UTF-8 text")


@pytest.mark.parametrize(
    "raw",
    ["\ufffd", "👍🏽", "漢字", "'; DROP TABLE page_views; --", "../../etc/passwd", "{vc:x}:site"],
)
def test_printable_but_unusual_pages_are_accepted(raw: str) -> None:
    assert ids.page_id(raw) == raw


@pytest.mark.parametrize("raw", [None, 1, 1.5, True, b"a", ["a"], {"a": 1}])
def test_page_that_is_not_a_string_is_refused(raw: object) -> None:
    err = refusal(raw)
    assert (err.field, err.message) == ("page", "must be a string")


def test_refusal_names_the_given_field_and_is_a_value_error() -> None:
    with pytest.raises(InvalidId) as caught:
        ids.page_id("", field="pages[3]")
    assert caught.value.field == "pages[3]"
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "must not be empty"


# --- site ids


@pytest.mark.parametrize("site", ["quan11", "a", "0", "my_site-2", "9-a_", "a" * SITE_ID_MAX_CHARS])
def test_valid_site_slugs_are_accepted_unchanged(site: str) -> None:
    assert ids.site_id(site) == site


@pytest.mark.parametrize(
    "site",
    [
        "Quan11",
        "-quan11",
        "_quan11",
        "quan 11",
        "quan.11",
        "a/b",
        "..",
        "quận11",
        "a\n",
        "a١",  # Arabic-Indic digit: \d would take it, the slug rule must not
        "' OR 1=1 --",
        "{vc:a}",
    ],
)
def test_site_outside_the_slug_alphabet_is_refused(site: str) -> None:
    err = refusal(site, ids.site_id)
    assert err.field == "site"
    assert err.message == (
        "must be lowercase letters, digits, '-' or '_', starting with a letter or digit"
    )


def test_site_length_boundaries() -> None:
    assert refusal("", ids.site_id).message == "must not be empty"
    too_long = refusal("a" * (SITE_ID_MAX_CHARS + 1), ids.site_id)
    assert too_long.message == f"must be at most {SITE_ID_MAX_CHARS} characters"


@pytest.mark.parametrize("site", [None, 11, b"quan11"])
def test_site_that_is_not_a_string_is_refused(site: object) -> None:
    assert refusal(site, ids.site_id).message == "must be a string"


# --- keys


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
