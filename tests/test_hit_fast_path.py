"""The hit fast path answers exactly as the middleware stack and the Starlette route would.

Two servers on the same Redis and Postgres: the app as served (HitFastPath in front), and the
same app entered below HitFastPath (ServerErrorMiddleware, telemetry, body limit, CORS,
routing, hits.post_hit). Each request goes to both; status, headers (in order) and body must
be the same, except the request id's value and, for counted hits, the totals (one higher on
the second server, which counts the same page again).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.app import create_app
from services.api.hit_fast_path import HitFastPath
from services.config import Settings
from tests.support.stack import ADMIN, SITE, register_site, running_api

PORTAL = "https://quan11.hochiminhcity.gov.vn"
OPEN_SITE = "open-site"
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


class _BelowFastPath:
    """The app entered below HitFastPath: what answered hits before it existed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        scope["app"] = app
        stack = getattr(app, "middleware_stack", None)
        if stack is None:
            stack = app.build_middleware_stack()  # type: ignore[attr-defined]
            app.middleware_stack = stack  # type: ignore[attr-defined]
        assert isinstance(stack, HitFastPath)
        await stack.app(scope, receive, send)


@pytest.fixture
async def pair(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with (
        running_api(settings) as fast,
        running_api(settings, _BelowFastPath(create_app(settings))) as stack,
    ):
        await register_site(fast)
        response = await fast.put(
            f"/v1/sites/{SITE}", json={"allowed_origins": [PORTAL]}, headers=ADMIN
        )
        assert response.status_code == 200, response.text
        await register_site(fast, OPEN_SITE)
        yield fast, stack


def _comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "date"]
    assert [k for k, _ in headers].count("x-request-id") == (response.status_code != 500)
    headers = [(k, "ID" if k == "x-request-id" else v) for k, v in headers]
    return response.status_code, headers, response.content


CASES: list[tuple[str, str, dict[str, str], bytes]] = [
    # (name, site, headers, body)
    ("plain", OPEN_SITE, {"content-type": "application/json"}, b'{"page":"a"}'),
    ("beacon text/plain", OPEN_SITE, {"content-type": "text/plain"}, b'{"page":"b","visitor":"v"}'),
    ("origin on an open site", OPEN_SITE, {"origin": "https://x.example"}, b'{"page":"c"}'),
    ("allowed origin", SITE, {"origin": PORTAL}, b'{"page":"d"}'),
    ("allowed origin, odd case", SITE, {"origin": PORTAL.upper()}, b'{"page":"d2"}'),
    ("allowed referer", SITE, {"referer": PORTAL + "/tin-tuc?x=1"}, b'{"page":"e"}'),
    ("refused origin", SITE, {"origin": "https://evil.example"}, b'{"page":"f"}'),
    ("refused referer", SITE, {"referer": "https://evil.example/p"}, b'{"page":"f"}'),
    ("bad referer", SITE, {"referer": "http://[::1"}, b'{"page":"f"}'),
    ("bot", OPEN_SITE, {"user-agent": BOT_UA}, b'{"page":"g"}'),
    ("no user agent", OPEN_SITE, {"user-agent": ""}, b'{"page":"h"}'),
    ("invalid site", "Not_A_Site!", {}, b'{"page":"i"}'),
    ("unknown site", "nobody-here", {"origin": PORTAL}, b'{"page":"i"}'),
    ("xml", OPEN_SITE, {"content-type": "application/xml"}, b"<page/>"),
    ("not json", OPEN_SITE, {"origin": "https://x.example"}, b"{page"),
    ("json list", OPEN_SITE, {}, b"[1]"),
    ("missing page", OPEN_SITE, {}, b'{"visitor":"v"}'),
    ("empty page", OPEN_SITE, {}, b'{"page":"  "}'),
    ("visitor not text", OPEN_SITE, {}, b'{"page":"j","visitor":7}'),
    ("too large by length", OPEN_SITE, {"origin": "https://x.example"}, b" " * 20_000),
    ("given request id", OPEN_SITE, {"x-request-id": "abc-123"}, b'{"page":"l"}'),
    ("stats asked", SITE, {"origin": PORTAL}, b'{"page":"m","stats":true}'),
    ("stats not asked", OPEN_SITE, {}, b'{"page":"m","stats":false}'),
    ("stats null", OPEN_SITE, {}, b'{"page":"m","stats":null}'),
    ("stats not a boolean", OPEN_SITE, {}, b'{"page":"m","stats":"yes"}'),
    ("stats as a number", OPEN_SITE, {}, b'{"page":"m","stats":1}'),
    ("stats by a bot", OPEN_SITE, {"user-agent": BOT_UA}, b'{"page":"n","stats":true}'),
    ("stats on an unknown site", "nobody-here", {}, b'{"page":"m","stats":true}'),
]  # fmt: skip
# Fields of the statistics block that a hit counted on both servers moves by one.
MOVED_BY_A_HIT = ("today", "this_week", "this_month", "total")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_fast_path_answers_as_the_stack_does(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    case: tuple[str, str, dict[str, str], bytes],
) -> None:
    fast, stack = pair
    _, site, headers, body = case
    url = f"/v1/sites/{site}/hits"
    first = await fast.post(url, content=body, headers=headers)
    second = await stack.post(url, content=body, headers=headers)
    assert first.status_code == second.status_code, (first.text, second.text)
    a, b = _comparable(first), _comparable(second)
    if first.status_code == 200 and first.json().get("counted"):
        # Counted twice: the second answer's totals are one higher; lengths may differ.
        one, two = first.json(), second.json()
        assert two["page_views"] == one["page_views"] + 1
        assert two["site_views"] == one["site_views"] + 1
        if "stats" in one:
            for name in MOVED_BY_A_HIT:
                assert two["stats"][name] == one["stats"][name] + 1
                one["stats"][name] = two["stats"][name] = 0
        assert {**two, "page_views": 0, "site_views": 0} == {
            **one,
            "page_views": 0,
            "site_views": 0,
        }
        a = (a[0], [h for h in a[1] if h[0] != "content-length"], b"")
        b = (b[0], [h for h in b[1] if h[0] != "content-length"], b"")
    assert a == b
    if "x-request-id" in headers:
        assert first.headers["x-request-id"] == headers["x-request-id"]


async def test_other_requests_pass_through(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    fast, stack = pair
    for method, url in [
        ("GET", f"/v1/sites/{OPEN_SITE}/hits"),
        ("POST", f"/v1/sites/{OPEN_SITE}/hits/batch"),
        ("OPTIONS", f"/v1/sites/{SITE}/hits"),
    ]:
        headers = {"origin": PORTAL, "access-control-request-method": "POST"}
        first = await fast.request(method, url, headers=headers)
        second = await stack.request(method, url, headers=headers)
        assert _comparable(first) == _comparable(second)


async def test_a_streamed_body_over_the_limit_is_refused_alike(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"page":"'
        for _ in range(20):
            yield b"m" * 1000
        yield b'"}'

    answers = []
    for client in pair:
        response = await client.post(
            f"/v1/sites/{SITE}/hits", content=chunks(), headers={"origin": PORTAL}
        )
        assert "content-length" not in response.request.headers
        answers.append(_comparable(response))
    assert answers[0] == answers[1]
    assert answers[0][0] == 413


async def _assert_same_get(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    endpoint: str,
    case: tuple[str, str, str, dict[str, str]],
) -> None:
    """After a hit (so that totals are not all zero), GET `endpoint` of the case's site
    from the fast path and from the stack: both answer the same."""
    fast, stack = pair
    _, site, query, headers = case
    assert (await fast.post(f"/v1/sites/{OPEN_SITE}/hits", json={"page": "a"})).status_code == 200
    url = f"/v1/sites/{site}/{endpoint}" + (f"?{query}" if query else "")
    body = b" " * int(headers.get("x-test-body", "0"))
    first = await fast.request("GET", url, headers=headers, content=body)
    second = await stack.request("GET", url, headers=headers, content=body)
    assert _comparable(first) == _comparable(second), (first.text, second.text)


COUNTS_CASES: list[tuple[str, str, str, dict[str, str]]] = [
    # (name, site, query, headers)
    ("no pages", OPEN_SITE, "", {}),
    ("pages", OPEN_SITE, "page=a&page=b&page=a&page=news%2F1&other=x", {}),
    ("blank and odd pages", OPEN_SITE, "page=&page=%20c%20&page", {}),
    ("allowed origin", SITE, "page=d", {"origin": PORTAL}),
    ("refused origin", SITE, "page=d", {"origin": "https://evil.example"}),
    ("allowed referer", SITE, "page=d", {"referer": PORTAL + "/x"}),
    ("invalid site", "Not_A_Site!", "page=d", {}),
    ("unknown site", "nobody-here", "page=d", {}),
    ("too many pages", OPEN_SITE, "&".join(f"page=p{i}" for i in range(101)), {}),
    ("control character", OPEN_SITE, "page=%07", {}),
    ("body too large", OPEN_SITE, "page=a", {"x-test-body": "20000"}),
]


@pytest.mark.parametrize("case", COUNTS_CASES, ids=[c[0] for c in COUNTS_CASES])
async def test_counts_fast_path_answers_as_the_stack_does(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    case: tuple[str, str, str, dict[str, str]],
) -> None:
    await _assert_same_get(pair, "counts", case)


STATS_CASES: list[tuple[str, str, str, dict[str, str]]] = [
    # (name, site, query, headers)
    ("plain", OPEN_SITE, "", {}),
    ("query ignored", OPEN_SITE, "page=a&x=1", {}),
    ("allowed origin", SITE, "", {"origin": PORTAL}),
    ("allowed origin, odd case", SITE, "", {"origin": PORTAL.upper()}),
    ("refused origin", SITE, "", {"origin": "https://evil.example"}),
    ("allowed referer", SITE, "", {"referer": PORTAL + "/x"}),
    ("refused referer", SITE, "", {"referer": "https://evil.example/x"}),
    ("invalid site", "Not_A_Site!", "", {}),
    ("unknown site", "nobody-here", "", {"origin": PORTAL}),
    ("given request id", OPEN_SITE, "", {"x-request-id": "abc-123"}),
    ("body too large", OPEN_SITE, "", {"x-test-body": "20000"}),
]


@pytest.mark.parametrize("case", STATS_CASES, ids=[c[0] for c in STATS_CASES])
async def test_stats_fast_path_answers_as_the_stack_does(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    case: tuple[str, str, str, dict[str, str]],
) -> None:
    await _assert_same_get(pair, "stats", case)
