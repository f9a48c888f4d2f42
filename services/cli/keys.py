"""`viewcounter keys create|list|revoke`: a site's API keys from the command line, logged in
the audit log as `cli:<os user>`. `create` prints the new secret alone on the last line of
stdout (the only time it is shown)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from services import clients
from services.config import Settings
from services.counter import ids
from services.counter.errors import CounterUnavailable
from services.counting import apikeys
from services.counting.live import UnknownSite
from services.counting.principals import SCOPES, CommandLine, Scope
from services.db import audit as db_audit
from services.db import errors as db_errors


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `keys` subcommand and its own: create, list, revoke."""
    keys = sub.add_parser("keys", help="a site's API keys (each with one scope)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key; prints its secret on the last line")
    create.add_argument("site")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument("--name", help="what the key is for (shown in lists and the audit log)")
    create.add_argument(
        "--expires-in", type=int, metavar="DAYS", help="days until it expires (default: never)"
    )
    listing = keys_sub.add_parser("list", help="the site's keys (never their secrets)")
    listing.add_argument("site")
    revoke = keys_sub.add_parser("revoke", help="revoke a key (refused everywhere within 5 s)")
    revoke.add_argument("site")
    revoke.add_argument("key_id")


def _fail(message: str) -> int:
    print(f"viewcounter: {message}", file=sys.stderr)
    return 2


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run `keys create|list|revoke`; the exit code."""
    try:
        site = ids.site_id(args.site)
        if args.keys_command == "create":
            name = apikeys.check_name(args.name)
            days = apikeys.check_expires_in_days(args.expires_in)
            return asyncio.run(_create(settings, site, apikeys.check_scope(args.scope), name, days))
        if args.keys_command == "list":
            return asyncio.run(_list(settings, site))
        return asyncio.run(_revoke(settings, site, args.key_id))
    except ids.InvalidId as exc:
        return _fail(f"{exc.field}: {exc.message}")
    except apikeys.InvalidKeyRequest as exc:
        field = {"expires_in_days": "--expires-in"}.get(exc.field, f"--{exc.field}")
        return _fail(f"{field}: {exc.message}")
    except UnknownSite as exc:
        return _fail(f"site: no such site {exc}; register it first")
    except (CounterUnavailable, db_errors.DatabaseUnavailable) as exc:
        return _fail(str(exc))


def _author() -> db_audit.Author:
    return db_audit.Author(CommandLine(getpass.getuser()).actor)


async def _create(settings: Settings, site: str, scope: Scope, name: str, days: int | None) -> int:
    opened = await clients.connect(settings, clients.COMMAND)
    try:
        keyring = apikeys.KeyRing(opened.db.keys, opened.key_generation)
        created = await keyring.create(site, scope, name, days, _author())
    finally:
        await opened.aclose()
    key = created.key
    expires = "never" if key.expires_at is None else key.expires_at.isoformat()
    print(
        f"key {key.id} created for site {site}: scope {key.scope}, name {key.name!r}, "
        f"expires {expires}"
    )
    print("the secret (shown only now; send it as Authorization: Bearer SECRET):")
    print(created.secret)
    return 0


async def _list(settings: Settings, site: str) -> int:
    opened = await clients.connect(settings, clients.COMMAND)
    try:
        keys = await apikeys.KeyRing(opened.db.keys, opened.key_generation).of_site(site)
    finally:
        await opened.aclose()
    print("id\tscope\tname\tcreated_at\texpires_at\tlast_used_at\trevoked_at")
    for key in keys:
        row = key.as_dict()
        print(
            "\t".join(
                "-" if row[f] is None else str(row[f])
                for f in (
                    "id",
                    "scope",
                    "name",
                    "created_at",
                    "expires_at",
                    "last_used_at",
                    "revoked_at",
                )
            )
        )
    return 0


async def _revoke(settings: Settings, site: str, key_id: str) -> int:
    opened = await clients.connect(settings, clients.COMMAND)
    try:
        keyring = apikeys.KeyRing(opened.db.keys, opened.key_generation)
        key = await keyring.revoke(site, key_id, _author())
    finally:
        await opened.aclose()
    if key is None:
        print(f"viewcounter: site {site} has no key {key_id}", file=sys.stderr)
        return 1
    print(f"key {key.id} of site {site} revoked (every api process refuses it within 5 s)")
    return 0
