"""Bulk ingestion: `POST /v1/sites/{site}/hits/batch`, many page views from a trusted collector
(a server-side tracker, a log shipper), counted like single hits and idempotent per
`Idempotency-Key`: a retried batch is counted once.

The views carry who made them (`ip`, `user_agent`, `visitor`) for dedupe, unique visitors and
the bot filter; there is no per-client rate limit on them (the collector speaks for many
clients), but the route itself is rate-limited per caller like the admin routes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.api.access import require_ingest
from services.api.errors import ApiError
from services.api.hit_body import VISITOR_MAX_CHARS
from services.api.json_body import json_object
from services.counter import ids
from services.counter.outcomes import Outcome
from services.counter.visitors import USER_AGENT_MAX_CHARS
from services.counting.live import LiveCounts, View

BATCH_PATH = re.compile(r"^/v1/sites/[^/]+/hits/batch$")
MAX_HITS = 10_000
# The route reads its own body (BodyLimit lets BATCH_PATH through): 10,000 views with long
# user agents fit.
MAX_BATCH_BYTES = 8 * 1024 * 1024
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,128}")
FIELDS = frozenset({"page", "visitor", "ip", "user_agent"})


async def _read_capped(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BATCH_BYTES):
        raise ApiError(413, "body_too_large", f"a batch is at most {MAX_BATCH_BYTES} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BATCH_BYTES:
            raise ApiError(
                413, "body_too_large", f"a batch is at most {MAX_BATCH_BYTES} bytes", "body"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _text(item: dict[str, object], name: str, where: str, max_chars: int) -> str | None:
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise ApiError(
            422,
            "invalid_field",
            f"{where}.{name} must be a string of at most {max_chars} characters",
            f"{where}.{name}",
        )
    return value


def parse_views(raw: bytes) -> list[View]:
    """The views of a batch body, or ApiError naming the first bad field (`hits[3].page`)."""
    data = json_object(raw)
    hits = data.get("hits")
    if not isinstance(hits, list) or not 1 <= len(hits) <= MAX_HITS:
        raise ApiError(
            422, "invalid_field", f"hits must be a list of 1 to {MAX_HITS} page views", "hits"
        )
    views = []
    for i, item in enumerate(hits):
        where = f"hits[{i}]"
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_field", f"{where} must be an object", where)
        unknown = sorted(set(item) - FIELDS)
        if unknown:
            raise ApiError(
                422,
                "unknown_field",
                f"{where}.{unknown[0]} is not a field",
                f"{where}.{unknown[0]}",
            )
        if "page" not in item:
            raise ApiError(422, "missing_field", f"{where}.page is required", f"{where}.page")
        try:
            page = ids.page_id(item["page"])
        except ids.InvalidId as exc:
            raise ApiError(
                422, "invalid_field", f"{where}.page {exc.message}", f"{where}.page"
            ) from None
        ip = _text(item, "ip", where, 45) or ""
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ApiError(
                    422, "invalid_field", f"{where}.ip is not an IP address", f"{where}.ip"
                ) from None
        views.append(
            View(
                page=page,
                visitor=_text(item, "visitor", where, VISITOR_MAX_CHARS),
                ip=ip,
                user_agent=_text(item, "user_agent", where, USER_AGENT_MAX_CHARS) or "",
            )
        )
    return views


async def post_batch(request: Request) -> Response:
    """Count many page views of one site; answers how many had each outcome."""
    await require_ingest(request)
    live: LiveCounts = request.state.live
    site = ids.site_id(request.path_params["site"])
    raw = await _read_capped(request)
    views = parse_views(raw)
    key = request.headers.get("idempotency-key")
    # One wait for Redis for the whole request (its calls one after the other), as a hit has.
    with live.redis_deadline():
        replayed, counted = await _count(live, site, views, raw, key)
    tally = {outcome.value: counted.get(outcome, 0) for outcome in Outcome}
    body = {"site": site, "hits": len(views), "outcomes": tally, "replayed": replayed}
    return Response(orjson.dumps(body), media_type="application/json")


async def _count(
    live: LiveCounts, site: str, views: list[View], raw: bytes, key: str | None
) -> tuple[bool, dict[Outcome, int]]:
    """Whether the batch was sent before (same Idempotency-Key and body), and how many views
    had each outcome."""
    replayed = False
    token = None  # no key: no retry record beyond this request
    if key is not None:
        if not IDEMPOTENCY_KEY_RE.fullmatch(key):
            raise ApiError(
                422,
                "invalid_field",
                "Idempotency-Key must be 1 to 128 visible ASCII characters",
                "idempotency-key",
            )
        token = hashlib.sha256(key.encode()).hexdigest()[:32]
        body_hash = hashlib.sha256(raw).hexdigest()
        first = await live.claim_idempotency(site, token, body_hash)
        if first is not None and first != body_hash:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used for another batch in the last "
                + _duration(live.idempotency_keep_s),
                "idempotency-key",
            )
        replayed = first is not None
    return replayed, await live.hit_batch(site, views, token)


def _duration(seconds: int) -> str:
    """`seconds` as people say it: "24 hours", "90 minutes", "100 seconds"."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}" + ("s" if n != 1 else "")
    return f"{seconds} seconds"


routes: list[BaseRoute] = [Route("/v1/sites/{site}/hits/batch", post_batch, methods=["POST"])]
