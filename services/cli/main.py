"""The `viewcounter` command: api, flusher, migrate, sites add, keys, import, report, up."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from services import clients, logs
from services.cli import keys as keys_cli
from services.cli import reports as reports_cli
from services.config import ConfigError, Settings, load_settings
from services.counter import ids, siteconfig
from services.counter.errors import CounterUnavailable
from services.counting.live import InvalidTimezone, LiveCounts, zone
from services.counting.principals import CommandLine
from services.db import audit as db_audit
from services.db import errors as db_errors
from services.db import migrate as db_migrate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viewcounter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    sub.add_parser("flusher", help="move counts from Redis to Postgres every interval")
    sub.add_parser("migrate", help="apply database migrations")
    sites = sub.add_parser("sites", help="manage sites")
    sites_sub = sites.add_subparsers(dest="sites_command", required=True)
    add = sites_sub.add_parser(
        "add", help="register a site, or change the given settings of one (idempotent)"
    )
    add.add_argument("site")
    add.add_argument("--timezone", help="IANA time zone, e.g. Asia/Ho_Chi_Minh (new sites: UTC)")
    add.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        metavar="ORIGIN",
        help="a web origin allowed to send hits, e.g. https://example.com (repeatable)",
    )
    reports_cli.add_parsers(sub)  # import, report
    keys_cli.add_parser(sub)  # keys create|list|revoke
    up = sub.add_parser("up", help="run the whole stack locally (starts Redis and Postgres)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", type=Path, default=Path(".viewcounter"))
    up.add_argument("--site", default="demo", help="demo site to create")
    return parser


def _fail(message: str) -> int:
    print(f"viewcounter: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "up":
        from services.cli import up

        return up.run_up(
            host=args.host, port=args.port, data_dir=args.data_dir, demo_site=args.site
        )
    try:
        settings = load_settings()
    except ConfigError as exc:
        for line in exc.lines:
            print(f"viewcounter: {line}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    if args.command == "api":
        return _run_api(settings, args.host, args.port, args.workers)
    if args.command == "flusher":
        from services.flusher import main as flusher_main

        return asyncio.run(flusher_main.serve(settings))
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "sites":
        changes: dict[str, object] = {}
        try:
            site = ids.site_id(args.site)
            if args.timezone is not None:
                changes["timezone"] = args.timezone
                zone(args.timezone)
            if args.allowed_origins is not None:
                changes["allowed_origins"] = list(siteconfig.origins(args.allowed_origins))
        except (ids.InvalidId, siteconfig.InvalidSetting) as exc:
            return _fail(f"{exc.field}: {exc}")
        except InvalidTimezone as exc:
            return _fail(f"timezone: {exc}")
        return asyncio.run(_add_site(settings, site, changes))
    return _run_command(settings, args)


def _run_command(settings: Settings, args: argparse.Namespace) -> int:
    """keys, import, report."""
    if args.command == "keys":
        return keys_cli.run(settings, args)
    return reports_cli.run(settings, args)


def _run_api(settings: Settings, host: str, port: int, workers: int) -> int:
    if workers < 1:
        return _fail("--workers must be at least 1")
    from services.api import serve

    return serve.run(settings, host, port, workers)


async def _migrate(settings: Settings) -> int:
    try:
        applied = await db_migrate.migrate_database(settings.database_url, connect_timeout_s=10)
    except db_errors.DatabaseUnavailable as exc:
        return _fail(f"cannot connect to Postgres: {exc}")
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


async def _add_site(settings: Settings, site: str, changes: dict[str, object]) -> int:
    opened = await clients.connect(settings, clients.COMMAND)
    try:
        live = LiveCounts(opened.hits, opened.db.sites)
        author = db_audit.Author(CommandLine(getpass.getuser()).actor)
        config, created = await live.register(site, changes, author)
    except (CounterUnavailable, db_errors.DatabaseUnavailable) as exc:
        return _fail(str(exc))
    finally:
        await opened.aclose()
    print(f"site {site} {'created' if created else 'updated'}: {config.to_json()}")
    return 0
