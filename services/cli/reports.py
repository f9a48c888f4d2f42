"""`viewcounter import SITE FILE.csv` and `viewcounter report top|daily`: the same core as the
admin and report routes, run against Postgres (and Redis, for imports) from the settings."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from rich.console import Console

from services import clients
from services.cli import progress
from services.config import Settings
from services.counter import ids, startup
from services.counter.errors import CounterUnavailable
from services.counting import baselines, reports
from services.counting.live import UnknownSite
from services.counting.principals import CommandLine
from services.db import audit as db_audit
from services.db import errors as db_errors
from services.db import reports as db_reports

READ_CHUNK_BYTES = 1 << 16
PRINTED_REJECTIONS = 20


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `import` and `report` subcommands."""
    imp = sub.add_parser(
        "import", help="set baselines (legacy counts) from a page,views CSV; idempotent"
    )
    imp.add_argument("site")
    imp.add_argument("file", type=Path, help="CSV with the header page,views ('-': stdin)")
    imp.add_argument("--site-total", help="the legacy site total (default: unchanged)")
    imp.add_argument("--by", help="who, for the audit trail (default: the OS user)")
    report = sub.add_parser("report", help="top pages or views per day, from Postgres")
    report.add_argument("kind", choices=("top", "daily"))
    report.add_argument("--site", required=True)
    report.add_argument("--from", dest="first", help="YYYY-MM-DD, the site's local day")
    report.add_argument("--to", dest="last", help="YYYY-MM-DD (default: today there)")
    report.add_argument("--page", help="daily: one page instead of the whole site")
    report.add_argument("--limit", help=f"top: how many pages (default {reports.DEFAULT_LIMIT})")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")


def _fail(message: str) -> int:
    print(f"viewcounter: {message}", file=sys.stderr)
    return 2


def run(settings: Settings, args: argparse.Namespace, console: Console | None = None) -> int:
    """Run `import` or `report`; the exit code. An import shows its progress on `console`
    (default: stderr) when that is a terminal."""
    try:
        if args.command == "import":
            return asyncio.run(_import(settings, args, console or Console(stderr=True)))
        if args.command == "report":
            return asyncio.run(_report(settings, args))
        return _fail(f"unknown command {args.command}")
    except ids.InvalidId as exc:
        return _fail(f"{exc.field}: {exc.message}")
    except UnknownSite as exc:
        return _fail(f"site: no such site {exc}; register it first")
    except (CounterUnavailable, db_errors.DatabaseUnavailable) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"file: {exc}")


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    if str(path) == "-":
        stream = sys.stdin.buffer
        while chunk := await asyncio.to_thread(stream.read, READ_CHUNK_BYTES):
            yield chunk
        return
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK_BYTES):
            yield chunk


async def _import(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    site = ids.site_id(args.site)
    total = (
        None if args.site_total is None else baselines.views_value(args.site_total, "site_total")
    )
    if str(args.file) != "-" and not args.file.is_file():
        return _fail(f"file: {args.file} is not a file")
    opened = await clients.connect(settings, clients.IMPORT)
    try:
        await startup.register_scripts(opened.redis)
        importer = baselines.Importer(
            opened.db.baselines,
            opened.baselines,
            default_max_pages=settings.max_pages_per_site,
        )
        size = None if str(args.file) == "-" else args.file.stat().st_size
        with progress.RowProgress(console, f"importing {args.file.name}", size) as shown:
            report = await importer.import_csv(
                site,
                shown.track(_chunks(args.file)),
                site_total=total,
                changed_by=f"cli {args.by or getpass.getuser()}",
                author=db_audit.Author(CommandLine(getpass.getuser()).actor),
            )
    finally:
        await opened.aclose()
    r = report.result
    print(
        f"site {site}: {report.rows_read} rows read, {r.rows_accepted} accepted, "
        f"{r.pages_changed} pages changed ({r.pages_new} new), "
        f"site baseline {r.site_baseline_old} -> {r.site_baseline_new}, "
        f"{report.rejected_count} rejected"
        + (f", change {r.change_id}" if r.change_id is not None else ", nothing changed")
    )
    for row in report.rejected[:PRINTED_REJECTIONS]:
        print(f"  line {row.line}: {row.field}: {row.reason}", file=sys.stderr)
    if report.rejected_count > PRINTED_REJECTIONS:
        print(f"  ... and {report.rejected_count - PRINTED_REJECTIONS} more", file=sys.stderr)
    if report.live_pending:
        print(
            f"viewcounter: saved in Postgres, but Redis did not take the change yet "
            f"({report.live_pending} chunks queued): run the import again when Redis answers",
            file=sys.stderr,
        )
        return 1
    return 0


async def _report(settings: Settings, args: argparse.Namespace) -> int:
    site = ids.site_id(args.site)
    first = reports.parse_day(args.first, "from")
    last = reports.parse_day(args.last, "to")
    pool = await clients.connect_postgres(settings, clients.REPORT)
    try:
        reporter = reports.Reporter(db_reports.Reports(pool))
        result: reports.TopReport | reports.DailyReport
        if args.kind == "top":
            result = await reporter.top(site, first, last, reports.parse_limit(args.limit))
        else:
            page = None if args.page is None else ids.page_id(args.page)
            result = await reporter.daily(site, first, last, page)
    finally:
        await pool.close()
    if args.format == "json":
        sys.stdout.write(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "csv":
        sys.stdout.write(reports.to_csv(result.header(), result.rows()))
    else:
        sys.stdout.write(reports.to_table(result.header(), result.rows()))
    return 0
