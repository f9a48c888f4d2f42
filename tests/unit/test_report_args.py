"""Report arguments and output formats, shared by the report routes and `viewcounter report`:
what is accepted, the defaults, and the field a refusal names."""

from __future__ import annotations

from datetime import date

import pytest

from services.counter import ids
from services.counting import reports

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "day"), [("2025-03-09", date(2025, 3, 9)), ("2024-02-29", date(2024, 2, 29))]
)
def test_days_are_iso_dates(raw: str, day: date) -> None:
    assert reports.parse_day(raw, "from") == day


@pytest.mark.parametrize("raw", [None, ""])
def test_a_missing_day_is_none(raw: str | None) -> None:
    assert reports.parse_day(raw, "to") is None


@pytest.mark.parametrize("raw", ["2025-3-9", "20250309", "2025-02-29", "2025-03-09T00:00", "today"])
def test_other_days_are_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(ids.InvalidId) as caught:
        reports.parse_day(raw, "to")
    assert (caught.value.field, caught.value.message) == ("to", "must be a date as YYYY-MM-DD")


@pytest.mark.parametrize(
    ("raw", "limit"),
    [(None, reports.DEFAULT_LIMIT), ("", reports.DEFAULT_LIMIT), ("1", 1), ("1000", 1000)],
)
def test_limits_from_one_to_the_bound(raw: str | None, limit: int) -> None:
    assert reports.parse_limit(raw) == limit


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "1.5", "ten", "１"])
def test_other_limits_are_refused(raw: str) -> None:
    with pytest.raises(ids.InvalidId) as caught:
        reports.parse_limit(raw)
    assert caught.value.field == "limit"


@pytest.mark.parametrize(
    ("raw", "fmt"), [(None, "json"), ("", "json"), ("json", "json"), ("csv", "csv")]
)
def test_formats(raw: str | None, fmt: str) -> None:
    assert reports.parse_format(raw) == fmt


@pytest.mark.parametrize("raw", ["CSV", "xml", "table"])
def test_other_formats_are_refused(raw: str) -> None:
    with pytest.raises(ids.InvalidId) as caught:
        reports.parse_format(raw)
    assert caught.value.field == "format"


def test_csv_quotes_what_needs_it_with_crlf_lines() -> None:
    text = reports.to_csv(["rank", "page", "views"], [[1, "/a, b", 10], [2, 'say "hi"', 2]])
    assert text == 'rank,page,views\r\n1,"/a, b",10\r\n2,"say ""hi""",2\r\n'


def test_tables_align_numbers_right_and_text_left() -> None:
    text = reports.to_table(["rank", "page", "views"], [[1, "/a", 1200], [10, "/long-page", 7]])
    assert text.splitlines() == [
        "rank  page        views",
        "   1  /a           1200",
        "  10  /long-page      7",
    ]
