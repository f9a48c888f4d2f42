"""counter.js in a real browser (headless Chromium): the demo page, reloads, locales, a service
that is down, a strict CSP, JavaScript off, and lists of page counters.

Host pages are served from another origin than the api, as on a real site. The browser
presents a normal Chrome User-Agent: HeadlessChrome is on the bot list and would not count.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Browser

from services.cli import up
from services.cli.localservers import free_port
from services.config import Settings
from tests.support.browser import (
    ARTIFACTS,
    VALUE,
    HostPages,
    api_base,
    browsing,
    embed_page,
    open_page,
    reload,
    seed_baselines,
    session_browser,
)
from tests.support.stack import SITE, api_with_site, make_settings, running_api

ARTICLE = "/tin-tuc/phat-huy-vai-tro-doan-vien-thanh-nien-123"
DEMO_LIST = [
    "/tin-tuc/ra-quan-thang-thanh-nien-2025",
    "/tin-tuc/doi-thoai-voi-thanh-nien",
    "/tin-tuc/hem-xanh-sach-sang-phuong-5",
    "/tin-tuc/huong-dan-dich-vu-cong-truc-tuyen",
]
SITE_LEGACY_TOTAL = 37_409_356  # the next view makes it the 37.409.357
ARTICLE_LEGACY_VIEWS = 563  # the next view makes it "Số lượt người xem: 564"
# Each test takes ~2 s; the first one also launches chromium (slow on a cold cache).
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with session_browser() as chromium:
        yield chromium


async def live_counts(client: httpx.AsyncClient, *pages: str) -> tuple[int, dict[str, int]]:
    body = (await client.get(f"/v1/sites/{SITE}/counts", params={"page": list(pages)})).json()
    return body["site_views"], body["pages"]


async def until_page_views(client: httpx.AsyncClient, page: str, expected: int) -> None:
    """Wait (bounded by the test timeout) until `page` has `expected` views: for hits sent by
    sendBeacon, which the page does not wait for."""
    for _ in itertools.count():
        _, pages = await live_counts(client, page)
        if pages[page] >= expected:
            return
        await asyncio.sleep(0.05)


async def hit(client: httpx.AsyncClient, page: str, times: int = 1) -> None:
    for _ in range(times):
        response = await client.post(f"/v1/sites/{SITE}/hits", json={"page": page})
        assert response.status_code == 200, response.text


# --- the demo page ----------------------------------------------------------------------


async def test_demo_page_shows_the_counts_and_a_reload_adds_one_view(
    api: httpx.AsyncClient, site: str, settings: Settings, browser: Browser
) -> None:
    # Five views of other pages below, then this one: the footer shows the 37409357.
    legacy_total = SITE_LEGACY_TOTAL - 5
    await seed_baselines(
        settings, site, legacy_total, {ARTICLE: ARTICLE_LEGACY_VIEWS, DEMO_LIST[0]: 1200}
    )
    await hit(api, DEMO_LIST[0], 3)
    await hit(api, DEMO_LIST[1], 2)
    site_total = legacy_total + 5
    with up.serve_examples("127.0.0.1", free_port(), api_base(api), site) as url:
        assert url is not None
        async with browsing(browser, viewport={"width": 1200, "height": 800}) as context:
            demo = await open_page(context, url)
            assert await demo.text("[data-viewcounter=page]") == "564"
            footer = "[data-viewcounter=site]"
            boxes = await demo.page.locator(f"{footer} .vc-digit").all_inner_texts()
            assert boxes == list("37409357")
            assert await demo.page.get_attribute(footer, "aria-label") == "37.409.357"
            listed = [await demo.text(f'[data-viewcounter-page="{page}"]') for page in DEMO_LIST]
            assert listed == ["1.203", "2", "0", "0"]
            ARTIFACTS.mkdir(exist_ok=True)
            await demo.page.screenshot(path=ARTIFACTS / "demo.png", full_page=True)

            await reload(demo)
            assert await demo.text("[data-viewcounter=page]") == "565"
            assert await demo.value(footer) == str(site_total + 2)
            assert demo.errors == []
    assert await live_counts(api, ARTICLE) == (site_total + 2, {ARTICLE: 565})


async def test_a_reload_within_the_dedupe_window_is_not_counted(
    redis_url: str, database_url: str, browser: Browser, host: HostPages
) -> None:
    settings = make_settings(redis_url, database_url, dedupe_window=1800)
    async with api_with_site(settings) as client:
        url = host.add(
            "/bai-viet",
            embed_page(
                api_base(client),
                '<p>Xem: <b data-viewcounter="page">–</b></p>'
                '<p>Tổng: <b data-viewcounter="site">–</b></p>',
                script_attrs='data-page="bai-viet"',
            ),
        )
        async with browsing(browser) as context:
            page = await open_page(context, url)
            first = [await page.value(f"[data-viewcounter={k}]") for k in ("page", "site")]
            await reload(page)
            await reload(page)
            again = [await page.value(f"[data-viewcounter={k}]") for k in ("page", "site")]
        assert first == again == ["1", "1"]
        assert await page_and_site(client, "bai-viet") == (1, 1)


async def page_and_site(client: httpx.AsyncClient, page: str) -> tuple[int, int]:
    site_views, pages = await live_counts(client, page)
    return pages[page], site_views


# --- locales ----------------------------------------------------------------------------


async def test_numbers_are_formatted_for_the_pages_locale(
    api: httpx.AsyncClient, site: str, settings: Settings, browser: Browser, host: HostPages
) -> None:
    await seed_baselines(settings, site, SITE_LEGACY_TOTAL, {"so-lieu": 1233})
    body = "".join(
        f'<span id="{name}" data-viewcounter="site" {attrs}>–</span>'
        for name, attrs in [
            ("default", ""),  # <html lang="vi">
            ("vi", 'data-locale="vi-VN"'),
            ("en", 'data-locale="en-US"'),
            ("de", 'data-locale="de-DE"'),
            ("fr", 'data-locale="fr-FR"'),
            ("hi", 'data-locale="hi-IN"'),
            ("bogus", 'data-locale="not a locale!"'),
            ("boxes", 'data-digits="10"'),
        ]
    )
    body += '<span id="page" data-viewcounter="page">–</span>'
    url = host.add("/so-lieu", embed_page(api_base(api), body, script_attrs='data-page="so-lieu"'))
    async with browsing(browser, locale="en-US") as context:
        page = await open_page(context, url)
        texts = {
            name: await page.text(f"#{name}")
            for name in ("default", "vi", "en", "de", "fr", "hi", "bogus", "page")
        }
        boxes = await page.page.locator("#boxes .vc-digit").all_inner_texts()
        boxes_label = await page.page.get_attribute("#boxes", "aria-label")
        assert page.errors == []
    assert texts == {
        "default": "37.409.357",
        "vi": "37.409.357",
        "en": "37,409,357",
        "de": "37.409.357",
        "fr": "37\u202f409\u202f357",
        "hi": "3,74,09,357",
        "bogus": "37,409,357",  # an invalid tag falls back to the browser's locale
        "page": "1.234",
    }
    assert boxes == list("0037409357")
    assert boxes_label == "37.409.357"


# --- failure: the page never breaks -----------------------------------------------------

HOST_BODY = (
    '<p id="article">Nội dung bài viết vẫn hiển thị.</p>'
    '<p>Số lượt người xem: <b id="views" data-viewcounter="page">–</b></p>'
    '<p>Số lượt truy cập: <b id="visits" data-viewcounter="site" data-digits="8">–</b></p>'
    '<p><i id="other" data-viewcounter-page="other">–</i></p>'
)


async def test_the_page_renders_when_the_service_is_stopped(
    settings: Settings, browser: Browser, host: HostPages
) -> None:
    async with running_api(settings) as client:
        stopped_api = api_base(client)
    url = host.add("/tin", embed_page(stopped_api, HOST_BODY))
    async with browsing(browser) as context:
        page = await open_page(context, url, wait_widget=False)
        assert await page.text("#article") == "Nội dung bài viết vẫn hiển thị."
        assert [await page.text(s) for s in ("#views", "#visits", "#other")] == ["–"] * 3
        assert page.errors == []
        # The script itself could not load: nothing of ours ran.
        assert await page.page.get_attribute("script[data-site]", "data-viewcounter-state") is None


async def test_the_page_renders_when_the_service_answers_errors(
    database_url: str, browser: Browser, host: HostPages
) -> None:
    settings = make_settings(f"redis://127.0.0.1:{free_port()}", database_url, redis_timeout=0.5)
    async with running_api(settings) as client:
        url = host.add("/tin", embed_page(api_base(client), HOST_BODY, script_attrs="data-live"))
        async with browsing(browser) as context:
            page = await open_page(context, url)
            state = await page.page.get_attribute("script[data-site]", "data-viewcounter-state")
            texts = [await page.text(s) for s in ("#article", "#views", "#visits", "#other")]
    assert state == "failed"
    assert texts == ["Nội dung bài viết vẫn hiển thị.", "–", "–", "–"]
    assert page.errors == []
    assert not any("/stream" in url for url in page.requests)  # no stream after a failed hit


# --- strict CSP -------------------------------------------------------------------------

RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push({directive: e.effectiveDirective, blocked: e.blockedURI,
                            sample: e.sample});
});
"""


async def test_under_a_strict_csp_the_widget_causes_no_violation(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    base = api_base(api)
    csp = (
        f"default-src 'none'; script-src {base} 'report-sample'; connect-src {base}; "
        f"img-src {base}; style-src 'report-sample'; base-uri 'none'; form-action 'none'"
    )
    # The one inline script is the host's own: it must be blocked and reported, which shows
    # that a violation by the widget would have been seen too.
    control = "<script>window.controlRan = true;</script>"
    body = HOST_BODY + control
    url = host.add(
        "/csp", embed_page(base, body, script_attrs='data-page="csp" data-live'), csp=csp
    )
    async with browsing(browser) as context:
        await context.add_init_script(RECORD_VIOLATIONS)
        page = await open_page(context, url)
        assert await page.value("#views") == "1"
        assert await page.page.locator("#visits .vc-digit").all_inner_texts() == list("00000001")
        assert await page.value("#other") == "0"
        # The live stream (EventSource, under connect-src) brings a view from elsewhere.
        await hit(api, "csp")
        # (a locator, not wait_for_function: that evaluates a string, which this CSP forbids)
        await page.page.locator(f'#views[{VALUE}="2"]').wait_for(state="attached")
        violations = await page.page.evaluate("window.__violations")
        control_ran = await page.page.evaluate("window.controlRan === true")
        assert page.errors == []
    assert control_ran is False
    assert violations == [
        {"directive": "script-src-elem", "blocked": "inline", "sample": "window.controlRan = true;"}
    ]


# --- JavaScript off: the pixel ----------------------------------------------------------


async def test_the_pixel_counts_with_javascript_disabled_and_only_then(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    base = api_base(api)
    pixel = f'<img src="{base}/v1/sites/{site}/hit.gif?page=%2Fkhong-js" alt="">'
    pixel = f"<noscript>{pixel}</noscript>"
    url = host.add("/khong-js", embed_page(base, HOST_BODY + pixel))
    async with browsing(browser, java_script_enabled=False) as context:
        page = await open_page(context, url, wait_widget=False)
        assert await page.text("#views") == "–"
        assert any("/hit.gif" in u for u in page.requests)
    assert await page_and_site(api, "/khong-js") == (1, 1)
    # With JavaScript on, the script counts the view and the <noscript> pixel stays unloaded.
    async with browsing(browser) as context:
        page = await open_page(context, url)
        assert await page.text("#views") == "2"
        assert not any("/hit.gif" in u for u in page.requests)
    assert await page_and_site(api, "/khong-js") == (2, 2)


# --- lists of page counters -------------------------------------------------------------


async def test_a_list_of_twenty_page_counters_costs_one_request(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    base = api_base(api)
    ids = [f"/tin-tuc/bai-{i}" for i in range(20)]
    await hit(api, ids[0], 3)
    await hit(api, ids[7], 1)
    items = "".join(
        f'<li><a href="{page}">Bài {i}</a> <span data-viewcounter-page="{page}">–</span></li>'
        for i, page in enumerate(ids)
    )
    url = host.add(
        "/danh-sach", embed_page(base, f"<ul>{items}</ul>", script_attrs='data-page="/danh-sach"')
    )
    async with browsing(browser) as context:
        page = await open_page(context, url)
        shown = [await page.value(f'[data-viewcounter-page="{p}"]') for p in ids]
        api_requests = [u for u in page.requests if u.startswith(base)]
    assert shown == ["3"] + ["0"] * 6 + ["1"] + ["0"] * 12
    reads = [u for u in api_requests if urlsplit(u).path == f"/v1/sites/{site}/counts"]
    assert len(reads) == 1
    assert parse_qs(urlsplit(reads[0]).query)["page"] == ids
    # The rest: the script itself and this page's own hit (sent by sendBeacon: nothing on
    # this page shows its own count).
    assert sorted(urlsplit(u).path for u in api_requests if u not in reads) == [
        "/v1/counter.js",
        f"/v1/sites/{site}/hits",
    ]
    await until_page_views(api, "/danh-sach", 1)
    assert await page_and_site(api, "/danh-sach") == (1, 5)


# --- page ids ---------------------------------------------------------------------------


async def test_page_id_defaults_to_the_canonical_path_normalised(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    base = api_base(api)
    plain = embed_page(base, '<b data-viewcounter="page">–</b>')
    for path in ("/a/", "/a", "/a/index.html"):
        host.add(path, plain)
    canonical = embed_page(
        base,
        '<b data-viewcounter="page">–</b>',
        head=(
            '<link rel="canonical" '
            'href="https://portal.example/tin-tuc//ph%E1%BA%A1m-v%C4%83n-%C4%91%E1%BB%93ng/'
            'index.html?amp=1">'
        ),
    )
    host.add("/amp/123", canonical)
    explicit = embed_page(base, '<b data-viewcounter="page">–</b>', script_attrs='data-page="123"')
    host.add("/b/c/", explicit)
    shown = []
    async with browsing(browser) as context:
        for path in ("/a/", "/a?utm_source=zalo#binh-luan", "/a/index.html", "/amp/123", "/b/c/"):
            page = await open_page(context, host.base_url + path)
            shown.append(await page.value("[data-viewcounter=page]"))
    assert shown == ["1", "2", "3", "1", "1"]
    site_views, pages = await live_counts(api, "/a", "/tin-tuc/phạm-văn-đồng", "123", "/b/c")
    assert (site_views, pages) == (
        5,
        {"/a": 3, "/tin-tuc/phạm-văn-đồng": 1, "123": 1, "/b/c": 0},
    )


async def test_a_template_that_includes_the_script_twice_counts_one_view(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    base = api_base(api)
    once = embed_page(base, '<b data-viewcounter="page">–</b>', script_attrs='data-page="twice"')
    again = f'<script async src="{base}/v1/counter.js" data-site="{site}" data-page="twice">'
    twice = once.replace("</head>", again + "</script></head>")
    url = host.add("/twice", twice)
    async with browsing(browser) as context:
        page = await open_page(context, url)
        await page.page.wait_for_load_state("load")
        shown = await page.value("[data-viewcounter=page]")
        hits = [u for u in page.requests if u.endswith("/hits")]
    assert (shown, len(hits)) == ("1", 1)
    assert await page_and_site(api, "twice") == (1, 1)
