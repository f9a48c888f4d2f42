"""Who may call a protected route, decided once per request: the operator token, a global
report or ingest token, or one site's key with one scope (services/counting/apikeys.py).

Every answer of a refusal is fixed (docs/keys-and-tenancy.md): no valid credential, 401
`unauthorized` (whatever was wrong with it); a key of another site, 404 `unknown_site`, the
very answer of a site that does not exist; a key of this site with another scope, 403
`wrong_scope`. The admin rate limit counts per key when a key is used, per client IP
otherwise; a secret the process has not cached is counted for its IP before Postgres is asked
for it, so guessing secrets is throttled before it costs a query.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from services.api.errors import ApiError, unknown_site
from services.config import Settings
from services.counting.apikeys import KeyRing
from services.counting.live import LiveCounts
from services.counting.principals import GlobalToken, Operator, Principal, Scope, SiteKey
from services.db import audit as db_audit
from services.logs import REQUEST_ID


@dataclass(frozen=True, slots=True)
class Door:
    """What opens a group of routes: which global tokens (the operator's always does) and
    which scopes of the site's own keys; `off`: the (code, message) when nothing could."""

    name: str
    key_scopes: frozenset[Scope]
    report_token: bool
    ingest_token: bool
    off: tuple[str, str]


ADMIN_ROUTES = Door(
    "admin",
    frozenset({"admin"}),
    report_token=False,
    ingest_token=False,
    off=("admin_disabled", "admin routes are off: no admin token is set"),
)
REPORT_ROUTES = Door(
    "report or admin",
    frozenset({"report", "admin"}),
    report_token=True,
    ingest_token=False,
    off=("admin_disabled", "reports are off: no report or admin token is set"),
)
INGEST_ROUTE = Door(
    "ingest",
    frozenset({"ingest"}),
    report_token=False,
    ingest_token=True,
    off=("ingest_disabled", "batch ingestion is off: no ingest token is set"),
)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _tokens(settings: Settings, door: Door) -> list[tuple[SecretStr, Principal]]:
    found: list[tuple[SecretStr, Principal]] = []
    if door.ingest_token and settings.ingest_token is not None:
        found.append((settings.ingest_token, GlobalToken("ingest")))
    if door.report_token and settings.report_token is not None:
        found.append((settings.report_token, GlobalToken("report")))
    if settings.admin_token is not None:
        found.append((settings.admin_token, Operator()))
    return found


def _token_holder(given: str, tokens: list[tuple[SecretStr, Principal]]) -> Principal | None:
    # Hash both sides so the comparison time does not depend on the lengths either; compare
    # with every token, so the time does not tell which one nearly matched.
    given_digest = _digest(given)
    holder: Principal | None = None
    for token, principal in tokens:
        if secrets.compare_digest(given_digest, _digest(token.get_secret_value())):
            holder = principal
    return holder


async def authorize(request: Request, door: Door) -> Principal:
    """The caller, when it may pass `door` for the site in the path; else the refusal."""
    settings: Settings = request.state.settings
    keyring: KeyRing = request.state.keyring
    tokens = _tokens(settings, door)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    ip_counted = False

    async def count_ip() -> None:
        nonlocal ip_counted
        ip_counted = True
        await refuse_over_rate(request)

    caller: Principal | None = None
    if scheme.lower() == "bearer" and given:
        caller = _token_holder(given, tokens)
        if caller is None:
            caller = await keyring.resolve(given, count_ip)
    if isinstance(caller, SiteKey):
        await refuse_over_rate(request, key_id=caller.id)
    elif not ip_counted:
        await refuse_over_rate(request)
    if caller is None:
        if not tokens:
            raise ApiError(403, *door.off)
        raise ApiError(
            401,
            "unauthorized",
            f"a valid {door.name} bearer token or key is required",
            "authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if isinstance(caller, SiteKey):
        if caller.site != request.path_params.get("site"):
            raise unknown_site()  # the answer of a site that does not exist, byte for byte
        if caller.scope not in door.key_scopes:
            raise ApiError(
                403,
                "wrong_scope",
                f"a key with the {caller.scope} scope does not open the {door.name} routes",
                "authorization",
            )
    return caller


async def refuse_over_rate(request: Request, key_id: str | None = None) -> None:
    """429 when this key (`key_id`), else this client address, made more than
    VIEWCOUNTER_ADMIN_RATE_LIMIT admin, report or batch requests this clock minute."""
    settings: Settings = request.state.settings
    live: LiveCounts = request.state.live
    ip = request.client.host if request.client else ""
    retry_after = await live.admin_retry_after(ip, settings.admin_rate_limit, key_id=key_id)
    if retry_after is not None:
        who = "key" if key_id is not None else "client"
        raise ApiError(
            429,
            "rate_limited",
            f"more than {settings.admin_rate_limit} admin requests a minute from this {who}",
            headers={"Retry-After": str(retry_after)},
        )


async def require_admin(request: Request) -> Principal:
    """The operator, or an admin key of the site in the path."""
    return await authorize(request, ADMIN_ROUTES)


async def require_reader(request: Request) -> Principal:
    """The operator, the report token, or a report or admin key of the site in the path."""
    return await authorize(request, REPORT_ROUTES)


async def require_ingest(request: Request) -> Principal:
    """The operator, the ingest token, or an ingest key of the site in the path."""
    return await authorize(request, INGEST_ROUTE)


async def admin_author(
    caller: Annotated[Principal, Depends(require_admin)],
) -> db_audit.Author:
    """Who the audit log names for an admin action of this request (the caller the admin
    check let in, resolved once per request), and the request's id."""
    return db_audit.Author(caller.actor, REQUEST_ID.get())


# All dependencies are `async def`: a plain `def` costs a thread-pool hop per request.
# FastAPI solves a dependency once per request: a route's AdminAuthor and its router's Admin
# share one check.
Admin = Depends(require_admin)
Reader = Depends(require_reader)
AdminAuthor = Annotated[db_audit.Author, Depends(admin_author)]
