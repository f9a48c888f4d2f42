"""Site and page id validation: what is accepted unchanged, normalised or refused."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import pytest

from services.counter import ids
from services.counter.ids import PAGE_ID_MAX_BYTES, SITE_ID_MAX_CHARS, InvalidId

pytestmark = pytest.mark.unit

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
