"""The website side without a browser: counter.js caching, the SVG badge and the SSE stream as
the api serves them (the demo page server and the server-free checks: tests/unit/)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import httpx
import orjson
import pytest

from services.api import badge, widget
from services.cli.localservers import free_port
from tests.support import svg
from tests.support.stack import SITE, api_with_site, make_settings, running_api, running_ops


async def hit(client: httpx.AsyncClient, page: str) -> None:
    response = await client.post(f"/v1/sites/{SITE}/hits", json={"page": page})
    assert response.status_code == 200, response.text


# --- counter.js -------------------------------------------------------------------------


async def test_counter_js_is_the_package_script_with_short_cache_and_etag(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/v1/counter.js", headers={"accept-encoding": "identity"})
    assert response.status_code == 200
    assert response.content == (
        resources.files("services.api").joinpath("static/counter.js").read_bytes()
    )
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == f"public, max-age={widget.SCRIPT_MAX_AGE_S}"
    assert response.headers["etag"] == f'W/"{widget.SCRIPT_VERSION}"'
    assert response.headers["link"] == (
        f'</v1/counter.js?v={widget.SCRIPT_VERSION}>; rel="canonical"'
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-encoding" not in response.headers


async def test_counter_js_versioned_url_is_cached_for_a_year_and_revalidates(
    api: httpx.AsyncClient,
) -> None:
    versioned = await api.get("/v1/counter.js", params={"v": widget.SCRIPT_VERSION})
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    stale = await api.get("/v1/counter.js", params={"v": "0123456789abcdef"})
    assert stale.headers["cache-control"] == f"public, max-age={widget.SCRIPT_MAX_AGE_S}"
    again = await api.get("/v1/counter.js", headers={"if-none-match": versioned.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == versioned.headers["etag"]
    other = await api.get("/v1/counter.js", headers={"if-none-match": 'W/"other"'})
    assert other.status_code == 200


async def test_counter_js_is_gzipped_when_accepted_and_head_answers(
    api: httpx.AsyncClient,
) -> None:
    raw = await api.get("/v1/counter.js", headers={"accept-encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["vary"] == "Accept-Encoding"
    assert raw.content == widget.SCRIPT  # httpx decoded it
    assert int(raw.headers["content-length"]) == len(widget.SCRIPT_GZIP) < len(widget.SCRIPT)
    assert gzip.decompress(widget.SCRIPT_GZIP) == widget.SCRIPT
    refused = await api.get("/v1/counter.js", headers={"accept-encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    head = await api.head("/v1/counter.js")
    assert (head.status_code, head.content) == (200, b"")


# --- badge.svg --------------------------------------------------------------------------



async def test_badge_shows_site_and_page_totals_without_counting(
    api: httpx.AsyncClient, site: str
) -> None:
    for page in ("a", "a", "b"):
        await hit(api, page)
    site_badge = await api.get(f"/v1/sites/{site}/badge.svg")
    page_badge = await api.get(
        f"/v1/sites/{site}/badge.svg", params={"page": "a", "label": "Số lượt xem"}
    )
    unseen = await api.get(f"/v1/sites/{site}/badge.svg", params={"page": "never"})
    assert site_badge.status_code == page_badge.status_code == 200
    assert site_badge.headers["content-type"] == "image/svg+xml"
    assert "script-src" not in site_badge.headers["content-security-policy"]
    assert site_badge.headers["content-security-policy"].startswith("default-src 'none'")
    assert "no-cache" in site_badge.headers["cache-control"]
    assert svg.texts(site_badge.text)[1] == ["views", "3"]
    assert svg.texts(page_badge.text)[1] == ["Số lượt xem", "2"]
    assert svg.texts(unseen.text)[1] == ["views", "0"]
    counts = await api.get(f"/v1/sites/{site}/counts", params={"page": ["a", "b"]})
    assert (counts.json()["site_views"], counts.json()["pages"]) == (3, {"a": 2, "b": 1})


async def test_hostile_label_through_the_route_is_escaped(
    api: httpx.AsyncClient, site: str
) -> None:
    for label in svg.HOSTILE_LABELS:
        response = await api.get(f"/v1/sites/{site}/badge.svg", params={"label": label})
        assert response.status_code == 200
        assert svg.texts(response.text)[1] == [label, "0"]
        assert "<script" not in response.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"label": "x" * (badge.LABEL_MAX_CHARS + 1)}, "label"),
        ({"label": "x" * 2000}, "label"),
        ({"label": "bad\x00label"}, "label"),
        ({"label": "a\u202eb"}, "label"),  # a bidi override would flip the badge's text
        ({"label": "   "}, "label"),
        ({"page": "a\nb"}, "page"),
        ({"page": "x" * 600}, "page"),
    ],
)
async def test_badge_bad_input_is_422_naming_the_field(
    api: httpx.AsyncClient, site: str, params: dict[str, str], field: str
) -> None:
    response = await api.get(f"/v1/sites/{site}/badge.svg", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


async def test_badge_of_unknown_or_bad_site_is_a_json_error(api: httpx.AsyncClient) -> None:
    unknown = await api.get("/v1/sites/nosuchsite/badge.svg")
    bad = await api.get("/v1/sites/Bad%20Site/badge.svg")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_site")
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "site")


# --- stream -----------------------------------------------------------------------------


class Events:
    """Reads `event: counts` messages off an open SSE response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.retry: int | None = None

    async def next(self) -> dict[str, object]:
        name, data = None, None
        async for line in self.lines:
            if line.startswith("retry: "):
                self.retry = int(line.removeprefix("retry: "))
            elif line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and name == "counts" and data is not None:
                result: dict[str, object] = orjson.loads(data)
                return result
        raise AssertionError("the stream ended")


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient, site: str = SITE, **params: str
) -> AsyncIterator[Events]:
    async with client.stream("GET", f"/v1/sites/{site}/stream", params=params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        yield Events(response)


async def gauges(client: httpx.AsyncClient) -> tuple[float, float]:
    """(open streams, pollers) of this process, from /metrics of the metrics listener app
    `client` talks to (the `ops` fixture: it runs in this process)."""
    text = (await client.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("viewcounter_streams_open", "viewcounter_stream_pollers"):
            values[name] = float(value)
    return values["viewcounter_streams_open"], values["viewcounter_stream_pollers"]


async def until_gauges(client: httpx.AsyncClient, expected: tuple[float, float]) -> None:
    """Wait (bounded by the test timeout) until the stream gauges read `expected`."""
    for _ in itertools.count():
        if await gauges(client) == expected:
            return
        await asyncio.sleep(0.05)


async def test_stream_sends_the_counts_now_and_again_after_a_hit(
    api: httpx.AsyncClient, site: str
) -> None:
    await hit(api, "a")
    async with stream(api, page="a") as events:
        first = await events.next()
        assert events.retry == 1000
        assert first == {"site": site, "page": "a", "site_views": 1, "page_views": 1}
        await hit(api, "b")
        await hit(api, "a")
        # The poller may see the two hits in one read or in two.
        seen = [await events.next()]
        while seen[-1]["site_views"] != 3:
            seen.append(await events.next())
    assert seen[-1] == {"site": site, "page": "a", "site_views": 3, "page_views": 2}
    assert all(e["page"] == "a" for e in seen)


async def test_stream_without_page_follows_the_site_total(
    api: httpx.AsyncClient, site: str
) -> None:
    async with stream(api) as events:
        assert await events.next() == {"site": site, "page": None, "site_views": 0, "page_views": 0}
        await hit(api, "x")
        assert (await events.next())["site_views"] == 1


async def test_streams_of_one_page_share_one_poller_and_disconnects_free_everything(
    api: httpx.AsyncClient, ops: httpx.AsyncClient, site: str
) -> None:
    await until_gauges(ops, (0, 0))
    async with stream(api, page="a") as s1, stream(api, page="a") as s2:
        async with stream(api, page="b") as s3:
            for events in (s1, s2, s3):
                await events.next()
            assert await gauges(ops) == (3, 2)
        await until_gauges(ops, (2, 1))
    # Leaving the `async with` closes the connections: the server sees the disconnect and
    # frees each slot and the last listener's poller, without writing to the socket first.
    await until_gauges(ops, (0, 0))


async def test_stream_count_is_bounded_and_a_disconnect_frees_the_slot(
    redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, stream_max_connections=1)
    async with api_with_site(settings) as client, running_ops(settings) as ops:
        await until_gauges(ops, (0, 0))
        async with stream(client, page="a") as events:
            await events.next()
            refused = await client.get(f"/v1/sites/{SITE}/stream", params={"page": "a"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "too_many_streams"
            assert refused.headers["retry-after"] == "30"
        await until_gauges(ops, (0, 0))
        async with stream(client, page="a") as events:
            assert (await events.next())["page_views"] == 0


async def test_stream_errors_come_before_the_stream_as_json(
    api: httpx.AsyncClient, ops: httpx.AsyncClient, site: str
) -> None:
    unknown = await api.get("/v1/sites/nosuchsite/stream")
    bad_page = await api.get(f"/v1/sites/{site}/stream", params={"page": "a\x00"})
    bad_site = await api.get("/v1/sites/-x/stream")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_site")
    assert (bad_page.status_code, bad_page.json()["error"]["field"]) == (422, "page")
    assert (bad_site.status_code, bad_site.json()["error"]["field"]) == (422, "site")
    # Refused streams hold no slot.
    await until_gauges(ops, (0, 0))


async def test_stream_with_redis_down_is_503_and_holds_no_slot(database_url: str) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}"
    settings = make_settings(dead_redis, database_url, redis_timeout=0.5)
    async with running_api(settings) as client, running_ops(settings) as ops:
        response = await client.get(f"/v1/sites/{SITE}/stream", params={"page": "a"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "redis_unavailable"
        badge_response = await client.get(f"/v1/sites/{SITE}/badge.svg")
        assert badge_response.status_code == 503
        script = await client.get("/v1/counter.js")
        assert script.status_code == 200  # the script needs no Redis
        await until_gauges(ops, (0, 0))
