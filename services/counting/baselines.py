"""Baselines: counts carried over from a legacy counter, added to the live totals exactly once.

Protocol (one change: a CSV import, or one page's or the site's baseline):

1. Postgres, one transaction: an advisory lock per site serialises baseline changes; the rows
   are streamed in with COPY and compared with the current baselines; changed page rows are
   written (sorted, as a flush locks them); then the site's `site_views` row is locked — the
   lock a load into Redis holds while it copies totals, and a flush takes before COMMIT — and
   the site's Redis load generation is read under it. The change, its audit rows and, when
   the site is loaded, its deltas for that generation (`baseline_outbox`) commit together.
   A load cannot run between that read and the COMMIT, so a load either came before (its
   totals lack the change: the outbox carries the delta) or comes after (its totals have it:
   the outbox row no longer matches the generation and is dropped).
2. Redis, after COMMIT (`settle`): the site's outbox chunks, oldest first, through
   apply_baseline.lua, which adds a chunk only under its generation and only if it is newer
   than the last chunk applied; then the chunk is deleted from the outbox.

If the process dies (or Redis fails) between 1 and 2, the change is in Postgres and the
live totals lag by the deltas not yet applied; nothing is applied twice. The next baseline
change of the site — re-running the same import is one — settles the outbox first, and a
reload of the site from Postgres (after Redis lost it) includes the change anyway.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field

from services.counter import ids
from services.counter.baselinestore import BaselineStore
from services.counter.errors import CounterUnavailable
from services.counting.live import UnknownSite
from services.db import audit as db_audit
from services.db import baselines as db_baselines
from services.db import errors as db_errors

log = logging.getLogger("viewcounter.baselines")

Row = db_baselines.Row

CSV_HEADER = ("page", "views")
CSV_HEADER_TITLES = ("page", "views", "title")
MAX_LINE_BYTES = 8192
MAX_VIEWS = 10**15
REPORTED_REJECTIONS = 1000
SOURCE_IMPORT = "import"
SOURCE_PAGE = "page"


class InvalidCsv(ids.InvalidId):
    """The file cannot be imported at all (no `page,views` header); nothing was applied."""

    def __init__(self, message: str) -> None:
        super().__init__("file", message)


@dataclass
class Rejections:
    """Rejected rows: all counted, the first REPORTED_REJECTIONS kept (bounded memory)."""

    count: int = 0
    rows: list[db_baselines.RejectedRow] = field(default_factory=list)

    def add(self, line: int, field_name: str, reason: str) -> None:
        """Record one rejected row."""
        self.count += 1
        if len(self.rows) < REPORTED_REJECTIONS:
            self.rows.append(db_baselines.RejectedRow(line, field_name, reason))


@dataclass(frozen=True)
class ImportReport:
    """The outcome of an import, for the API answer and the CLI."""

    site: str
    rows_read: int
    result: db_baselines.BaselineResult
    rejected_count: int
    rejected: list[db_baselines.RejectedRow]
    live_pending: int  # outbox chunks still waiting for Redis (0 normally)

    def as_dict(self) -> dict[str, object]:
        """The JSON shape of the report."""
        r = self.result
        return {
            "site": self.site,
            "change_id": r.change_id,
            "rows_read": self.rows_read,
            "rows_accepted": r.rows_accepted,
            "pages_changed": r.pages_changed,
            "pages_new": r.pages_new,
            "pages_unchanged": r.rows_accepted - r.pages_changed,
            "site_baseline": {"old": r.site_baseline_old, "new": r.site_baseline_new},
            "titles_set": r.titles_set,
            "rejected_count": self.rejected_count,
            "rejected": [
                {"line": x.line, "field": x.field, "reason": x.reason} for x in self.rejected
            ],
            "live_pending": self.live_pending,
        }


def views_value(raw: str, field_name: str = "views") -> int:
    """A baseline: a whole number from 0 to MAX_VIEWS (digits only, `_` and `,` not allowed)."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise ids.InvalidId(field_name, "must be a whole number of views (digits only)")
    value = int(text)
    if value > MAX_VIEWS:
        raise ids.InvalidId(field_name, f"must be at most {MAX_VIEWS}")
    return value


async def _lines(chunks: AsyncIterable[bytes], rejections: Rejections) -> AsyncIterator[str]:
    """Decoded lines of a byte stream; an over-long or non-UTF-8 line is rejected, and stands
    in as an empty string so line numbers stay right. Memory: one chunk plus one line."""
    buffer = b""
    skipping = False  # inside an over-long line, until its end
    line_no = 0

    def decode(raw: bytes) -> str:
        raw = raw.removesuffix(b"\r")
        if line_no == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            rejections.add(line_no, "line", "is not UTF-8 text")
            return ""

    async for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            raw, buffer = buffer[:end], buffer[end + 1 :]
            line_no += 1
            if skipping:
                skipping = False
                yield ""
                continue
            if len(raw) > MAX_LINE_BYTES:
                rejections.add(line_no, "line", f"is longer than {MAX_LINE_BYTES} bytes")
                yield ""
                continue
            yield decode(raw)
        if len(buffer) > MAX_LINE_BYTES and not skipping:
            rejections.add(line_no + 1, "line", f"is longer than {MAX_LINE_BYTES} bytes")
            skipping = True
        if skipping:
            buffer = b""
    if buffer and not skipping:
        line_no += 1
        yield decode(buffer)


def _fields(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line], strict=True), [])
    except csv.Error:
        return None


async def csv_rows(
    chunks: AsyncIterable[bytes], rejections: Rejections, counter: list[int]
) -> AsyncIterator[Row]:
    """(line, page, views, title or None) of each valid row of a `page,views` (or
    `page,views,title`) CSV stream; others go to `rejections`. counter[0] counts data rows
    read. Raises InvalidCsv without the header."""
    line_no = 0
    header: tuple[str, ...] | None = None
    async for line in _lines(chunks, rejections):
        line_no += 1
        if not line.strip():
            continue  # blank (or already rejected) line
        values = _fields(line)
        if header is None:
            found = None if values is None else tuple(v.strip().lower() for v in values)
            if found not in (CSV_HEADER, CSV_HEADER_TITLES):
                raise InvalidCsv(
                    f"line {line_no} must be the header 'page,views' (or 'page,views,title')"
                )
            header = found
            continue
        counter[0] += 1
        if values is None:
            rejections.add(line_no, "line", "is not valid CSV (check the quotes)")
            continue
        try:
            yield _row(line_no, values, header)
        except ids.InvalidId as exc:
            rejections.add(line_no, exc.field, exc.message)
    if header is None:
        raise InvalidCsv("the file is empty: it needs the header 'page,views'")


def _row(line_no: int, values: list[str], header: tuple[str, ...]) -> Row:
    """One data row; InvalidId naming the field at fault (`line` for a wrong field count).
    With a title column a row may leave the title out or empty: its title stays as it is."""
    names = ",".join(header)
    if not (len(values) == len(header) or (header == CSV_HEADER_TITLES and len(values) == 2)):
        raise ids.InvalidId("line", f"must have {len(header)} fields ({names}), not {len(values)}")
    page = ids.page_id(values[0])
    views = views_value(values[1])
    title = None
    if len(values) == 3 and values[2].strip():
        title = ids.title(values[2])
    return line_no, page, views, title


async def _rows_of(items: Iterable[Row]) -> AsyncIterator[Row]:
    for item in items:
        yield item


class Importer:
    """Baseline changes of sites: Postgres (db.baselines.Baselines) then Redis (a BaselineStore)."""

    def __init__(
        self,
        baselines: db_baselines.Baselines,
        store: BaselineStore,
        *,
        default_max_pages: int,
    ) -> None:
        self._baselines = baselines
        self._store = store
        self._default_max_pages = default_max_pages

    async def import_csv(
        self,
        site: str,
        chunks: AsyncIterable[bytes],
        *,
        site_total: int | None,
        changed_by: str,
        author: db_audit.Author,
    ) -> ImportReport:
        """Set the baselines of a `page,views` CSV (and the site's, when given): valid rows
        are applied together, invalid ones reported. Re-running it changes nothing.
        Raises InvalidCsv, UnknownSite, DatabaseUnavailable or CounterUnavailable (then
        nothing was applied). `live_pending` > 0: committed, but Redis could not take the
        deltas yet (they stay queued; see the module docstring)."""
        rejections = Rejections()
        counter = [0]
        result = await self._change(
            db_baselines.BaselineChange(site, site_total, SOURCE_IMPORT, changed_by, author),
            csv_rows(chunks, rejections, counter),
        )
        merged = sorted(rejections.rows + result.rejected, key=lambda r: r.line)
        pending = await self.settle(site)
        return ImportReport(
            site=site,
            rows_read=counter[0],
            result=result,
            rejected_count=rejections.count + result.rejected_count,
            rejected=merged[:REPORTED_REJECTIONS],
            live_pending=pending,
        )

    async def set_page(
        self, site: str, page: str, baseline: int, *, changed_by: str, author: db_audit.Author
    ) -> tuple[db_baselines.BaselineResult, int]:
        """Set one page's baseline (page and value already validated); the result and the
        chunks still queued for Redis."""
        result = await self._change(
            db_baselines.BaselineChange(site, None, SOURCE_PAGE, changed_by, author),
            _rows_of([(1, page, baseline, None)]),
        )
        return result, await self.settle(site)

    async def set_site(
        self, site: str, baseline: int, *, changed_by: str, author: db_audit.Author
    ) -> tuple[db_baselines.BaselineResult, int]:
        """Set the site total's baseline; the result and the chunks still queued for Redis."""
        result = await self._change(
            db_baselines.BaselineChange(site, baseline, SOURCE_PAGE, changed_by, author),
            _rows_of([]),
        )
        return result, await self.settle(site)

    async def _change(
        self, change: db_baselines.BaselineChange, rows: AsyncIterable[Row]
    ) -> db_baselines.BaselineResult:
        async def generation() -> str | None:
            return await self._store.site_generation(change.site)

        try:
            return await self._baselines.apply(
                change,
                rows,
                default_max_pages=self._default_max_pages,
                generation=generation,
                report_rows=REPORTED_REJECTIONS,
            )
        except db_errors.UnknownSiteRow:
            raise UnknownSite(change.site) from None

    async def settle(self, site: str) -> int:
        """Apply the site's queued baseline deltas to Redis, oldest first; the number of
        chunks still queued afterwards (0, unless Redis could not take them now)."""
        try:
            async for chunk in self._baselines.outbox(site):
                await self._store.apply_baseline(
                    site,
                    chunk.generation,
                    chunk.change_id,
                    chunk.chunk,
                    chunk.site_delta,
                    list(zip(chunk.pages, chunk.deltas, strict=True)),
                )
                await self._baselines.outbox_done(chunk.change_id, chunk.chunk)
        except CounterUnavailable as exc:
            log.warning("baseline deltas of %s stay queued for Redis: %s", site, exc)
            return await self._baselines.outbox_size(site)
        return 0
