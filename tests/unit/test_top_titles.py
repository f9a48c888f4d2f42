"""The most-read list's server-free parts: page titles (validation, the CSV title column),
the periods' local days, and the period and limit parameters."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from datetime import date

import pytest

from services.api import hit_body
from services.counter import ids
from services.counting import baselines, top

pytestmark = pytest.mark.unit


def test_a_title_is_normalised_to_nfc_and_trimmed() -> None:
    nfd = unicodedata.normalize("NFD", "Phát huy vai trò")
    assert nfd != "Phát huy vai trò"
    assert ids.title(f"  {nfd}\u00a0 ") == "Phát huy vai trò"


def test_a_title_may_hold_no_break_spaces_emoji_and_punctuation_inside() -> None:
    text = "Tin\u00a0tức: «Quận 11» 🎉 — 100%"
    assert ids.title(text) == text


def test_a_title_of_300_characters_is_taken_and_of_301_refused() -> None:
    assert ids.title("á" * 300) == "á" * 300
    with pytest.raises(ids.InvalidId) as caught:
        ids.title("á" * 301)
    assert caught.value.field == "title"
    assert "300" in caught.value.message


def test_the_length_is_counted_after_nfc_and_trimming() -> None:
    nfd = unicodedata.normalize("NFD", "á") * 300  # 600 code points before NFC
    assert ids.title(f"  {nfd}  ") == "á" * 300


@pytest.mark.parametrize(
    "bad",
    [
        "a\x00b",  # Cc
        "line\nbreak",  # Cc
        "esc\x1b[31m",  # Cc
        "bidi\u202eevil",  # Cf: right-to-left override
        "zero\u200bwidth",  # Cf
        "soft\u00adhyphen",  # Cf
        "lone \ud800 surrogate",  # Cs
    ],
)
def test_control_format_and_surrogate_characters_are_refused(bad: str) -> None:
    with pytest.raises(ids.InvalidId) as caught:
        ids.title(bad, "pages.title")
    assert caught.value.field == "pages.title"


@pytest.mark.parametrize("bad", ["", "   ", "\u00a0", 5, None, ["a"]])
def test_an_empty_or_non_string_title_is_refused(bad: object) -> None:
    with pytest.raises(ids.InvalidId):
        ids.title(bad)


def test_a_hit_body_title_is_validated_and_blank_means_none() -> None:
    assert hit_body.parse("text/plain", b'{"page": "/a", "title": " T\xc3\xa0 "}').title == "Tà"
    assert hit_body.parse("text/plain", b'{"page": "/a", "title": "  "}').title is None
    assert hit_body.parse("text/plain", b'{"page": "/a", "title": null}').title is None
    assert hit_body.parse("text/plain", b'{"page": "/a"}').title is None
    for body in (b'{"page": "/a", "title": "a\\u0000"}', b'{"page": "/a", "title": 3}'):
        with pytest.raises(ids.InvalidId) as caught:
            hit_body.parse("application/json", body)
        assert caught.value.field == "title"
    too_long = b'{"page": "/a", "title": "' + b"x" * 301 + b'"}'
    with pytest.raises(ids.InvalidId):
        hit_body.parse("application/json", too_long)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _rows(body: bytes) -> tuple[list[baselines.Row], list[tuple[int, str]]]:
    rejections = baselines.Rejections()
    rows = [r async for r in baselines.csv_rows(_once(body), rejections, [0])]
    return rows, [(r.line, r.field) for r in rejections.rows]


async def test_the_csv_title_column_is_optional_per_row_and_validated() -> None:
    body = (
        "page,views,title\n"
        "/a,1,Tin tức\n"  # 2
        "/b,2\n"  # 3: no title: unchanged
        "/c,3,\n"  # 4: empty: unchanged
        '/d,4,"  Quận 11, ""mới""  "\n'  # 5: quoted, trimmed
        f"/e,5,{'x' * 301}\n"  # 6: too long
        "/f,6,bad\x07bell\n"  # 7: a control character
        "/g,7,t,extra\n"  # 8: four fields
    ).encode()
    rows, rejected = await _rows(body)
    assert rows == [
        (2, "/a", 1, "Tin tức"),
        (3, "/b", 2, None),
        (4, "/c", 3, None),
        (5, "/d", 4, 'Quận 11, "mới"'),
    ]
    assert rejected == [(6, "title"), (7, "title"), (8, "line")]


async def test_without_a_title_column_a_third_field_is_refused() -> None:
    rows, rejected = await _rows(b"page,views\n/a,1\n/b,2,Title\n")
    assert rows == [(2, "/a", 1, None)]
    assert rejected == [(3, "line")]


@pytest.mark.parametrize(
    ("period", "today", "first"),
    [
        ("today", date(2026, 3, 4), date(2026, 3, 4)),
        ("week", date(2026, 3, 2), date(2026, 3, 2)),  # a Monday: the week is one day old
        ("week", date(2026, 3, 8), date(2026, 3, 2)),  # Sunday: from Monday
        ("week", date(2026, 1, 1), date(2025, 12, 29)),  # a week across the new year
        ("month", date(2026, 3, 1), date(2026, 3, 1)),
        ("month", date(2026, 3, 31), date(2026, 3, 1)),
        ("month", date(2024, 2, 29), date(2024, 2, 1)),
    ],
)
def test_a_period_runs_from_its_first_local_day_to_today(
    period: str, today: date, first: date
) -> None:
    assert top.period_days(period, today) == (first, today)


def test_days_between_lists_every_day_inclusive() -> None:
    assert top.days_between(date(2025, 12, 30), date(2026, 1, 2)) == [
        "2025-12-30",
        "2025-12-31",
        "2026-01-01",
        "2026-01-02",
    ]


def test_period_and_limit_parameters() -> None:
    assert top.parse_period(None) == "today"
    assert [top.parse_period(p) for p in top.PERIODS] == ["today", "week", "month"]
    assert top.parse_limit(None) == 10
    assert top.parse_limit("1") == 1
    assert top.parse_limit("50") == 50
    for bad in ("", "Today", "year", "week "):
        with pytest.raises(ids.InvalidId) as caught:
            top.parse_period(bad)
        assert caught.value.field == "period"
    for bad in ("", "0", "51", "-1", "1.5", "ten", "٣", "1e1"):
        with pytest.raises(ids.InvalidId) as caught:
            top.parse_limit(bad)
        assert caught.value.field == "limit"

