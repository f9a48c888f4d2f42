"""What long commands show: rows and rows/s of an import, and each slow step of `up`, live on
a terminal; nothing extra (or one plain line a step) when the output is not one."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from rich.console import Console

from services.cli import progress

pytestmark = pytest.mark.unit

CSV = b"page,views\n" + b"".join(b"/p%d,%d\n" % (i, i) for i in range(2000)) + b"/last,1"


def console(*, terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(shown: progress.RowProgress, data: bytes) -> bytes:
    return b"".join([chunk async for chunk in shown.track(_chunks(data))])


async def test_on_a_terminal_an_import_shows_rows_and_rows_per_second() -> None:
    term, out = console(terminal=True)
    with progress.RowProgress(term, "importing legacy.csv", len(CSV)) as shown:
        passed = await read_all(shown, CSV)
    assert passed == CSV  # the bytes go through unchanged
    assert shown.rows == 2001
    frames = out.getvalue().replace("\r", "\n").splitlines()
    read = [f for f in frames if "importing legacy.csv" in f]
    assert "2,001 rows" in read[-1] and "rows/s" in read[-1] and "100%" in read[-1]
    assert any("rows/s" in f and "2,001 rows" not in f for f in read)  # shown while reading
    assert "✓ applying to Postgres and Redis" in frames[-2]


async def test_an_import_of_unknown_size_still_counts_rows() -> None:
    term, out = console(terminal=True)
    with progress.RowProgress(term, "importing -", None) as shown:
        await read_all(shown, b"page,views\n/a,1\n/b,2\n")
    assert shown.rows == 2
    assert "2 rows" in out.getvalue()


async def test_off_a_terminal_an_import_prints_nothing() -> None:
    plain, out = console(terminal=False)
    with progress.RowProgress(plain, "importing legacy.csv", len(CSV)) as shown:
        passed = await read_all(shown, CSV)
    assert (passed, shown.rows, out.getvalue()) == (CSV, 2001, "")


def test_on_a_terminal_a_step_shows_a_spinner_with_what_it_does() -> None:
    term, out = console(terminal=True)
    with progress.step(term, "initialising Postgres in /d", "viewcounter up: "):
        pass
    assert "initialising Postgres in /d" in out.getvalue()


def test_off_a_terminal_a_step_is_one_plain_line() -> None:
    plain, out = console(terminal=False)
    doing = "initialising Postgres in /a/very/long/path/" + "x" * 100
    with progress.step(plain, doing, "viewcounter up: "):
        out.write("inside\n")
    assert out.getvalue() == f"viewcounter up: {doing}\ninside\n"
