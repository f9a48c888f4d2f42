"""The `page,views` CSV of a baseline import, parsed without a server: which rows are taken,
which are rejected with which line and field, whatever the chunks the bytes arrive in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from services.counter import ids
from services.counting import baselines
from tests.support.csvbodies import MALFORMED_HEAD, MALFORMED_HEAD_REJECTED, MALFORMED_TAIL

pytestmark = pytest.mark.unit

# Line 12 is the too-large count, 13 the too-long line.
MALFORMED = MALFORMED_HEAD + MALFORMED_TAIL


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def parse(
    body: bytes, chunk_size: int = 1 << 16
) -> tuple[list[tuple[int, str, int]], list[tuple[int, str]], int]:
    """(rows taken, (line, field) of the rejected ones, data rows read)."""
    rejections = baselines.Rejections()
    counter = [0]
    rows = [row async for row in baselines.csv_rows(_chunks(body, chunk_size), rejections, counter)]
    assert all(title is None for *_, title in rows)  # no title column: titles stay
    return [row[:3] for row in rows], [(r.line, r.field) for r in rejections.rows], counter[0]


async def test_bad_rows_are_rejected_with_their_line_and_field_and_the_rest_taken() -> None:
    rows, rejected, read = await parse(MALFORMED)
    assert rows == [(2, "/a", 10), (11, "/h, with comma", 11), (14, "/k", 3)]
    assert rejected == [
        *MALFORMED_HEAD_REJECTED,
        (12, "views"),
        (13, "line"),
    ]
    # Rows read: the data lines parsed as CSV; lines refused as bytes (not UTF-8, too long)
    # are rejected but not counted as read.
    assert read == 10


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 8191, 8192, 8193])
async def test_the_chunks_the_bytes_arrive_in_change_nothing(chunk_size: int) -> None:
    assert await parse(MALFORMED, chunk_size) == await parse(MALFORMED)


@pytest.mark.parametrize(
    "body", [b"", b"\r\n\r\n", b"/a,1\n", b"page\n/a,1\n", b"page,views,extra\n", b'"page,views\n']
)
async def test_a_file_without_the_header_is_refused_whole(body: bytes) -> None:
    with pytest.raises(baselines.InvalidCsv) as caught:
        await parse(body)
    assert caught.value.field == "file"


async def test_a_header_only_file_has_no_rows() -> None:
    assert await parse(b"page,views\n") == ([], [], 0)


async def test_rejections_are_all_counted_and_the_first_ones_kept() -> None:
    body = b"page,views\n" + b"/a,x\n" * (baselines.REPORTED_REJECTIONS + 5)
    rejections = baselines.Rejections()
    rows = [r async for r in baselines.csv_rows(_chunks(body, 4096), rejections, [0])]
    assert rows == []
    assert rejections.count == baselines.REPORTED_REJECTIONS + 5
    assert len(rejections.rows) == baselines.REPORTED_REJECTIONS


@pytest.mark.parametrize(
    ("raw", "value"), [("0", 0), ("563", 563), (" 7 ", 7), (str(baselines.MAX_VIEWS), 10**15)]
)
def test_views_are_whole_numbers_up_to_the_bound(raw: str, value: int) -> None:
    assert baselines.views_value(raw) == value


@pytest.mark.parametrize(
    "raw", ["", "-5", "1.5", "1_000", "1,000", "１２", "abc", str(baselines.MAX_VIEWS + 1)]
)
def test_other_views_are_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(ids.InvalidId) as caught:
        baselines.views_value(raw, "site_total")
    assert caught.value.field == "site_total"


def _lines(rejected: Sequence[tuple[int, str]]) -> list[int]:
    return [line for line, _ in rejected]


async def test_line_numbers_count_every_line_including_blank_and_rejected_ones() -> None:
    body = b"page,views\n\n/a,x\n\n\xff,1\n/b,2\n"
    rows, rejected, _ = await parse(body)
    assert rows == [(6, "/b", 2)]
    assert _lines(rejected) == [3, 5]
