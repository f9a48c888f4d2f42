"""The portal's statistics block and most-read list in a real browser (headless Chromium):
exact numbers from the page view's own hit, the demo page, titles shown as text only, and
links only to paths on the page's own origin.

These need the routes of the issue "The portal's statistics block": GET stats, the hit's
`stats` flag, GET top and the sites' `learn_titles` setting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Dialog, Page, Request

from services.cli import up
from services.cli.localservers import free_port
from services.config import Settings
from tests.support.browser import (
    ARTIFACTS,
    HostPages,
    api_base,
    browsing,
    embed_page,
    open_page,
    seed_baselines,
    session_browser,
)
from tests.support.stack import (
    ADMIN_TOKEN,
    SITE,
    SITE_TZ,
    flusher_for,
    make_settings,
    register_site,
    running_api,
)

pytestmark = pytest.mark.timeout(60)

BLOCK = ("online", "today", "yesterday", "week", "month", "total")
BLOCK_HTML = (
    "".join(f'<p>{name}: <b id="{name}" data-viewcounter="{name}">–</b></p>' for name in BLOCK)
    + '<p>odometer: <span id="boxes" data-viewcounter="total" data-digits="8"></span></p>'
)
TOP = "#top"
# A Wednesday in Ho Chi Minh City: Monday and Tuesday are in its week whether weeks start on
# Sunday or on Monday, and the Monday before is in its month but not its week.
WEDNESDAY_NOON = datetime(2025, 3, 12, 12, 0, tzinfo=ZoneInfo(SITE_TZ))
DAY_S = 86400
DEMO_ARTICLE = "/tin-tuc/phat-huy-vai-tro-doan-vien-thanh-nien-123"
DEMO_ARTICLES = ["/tin-tuc/ra-quan-thang-thanh-nien-2025", "/tin-tuc/doi-thoai-voi-thanh-nien"]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with session_browser() as chromium:
        yield chromium


async def hit(
    client: httpx.AsyncClient, page: str, *, visitor: str, title: str | None = None
) -> None:
    body: dict[str, str] = {"page": page, "visitor": visitor}
    if title is not None:
        body["title"] = title
    response = await client.post(f"/v1/sites/{SITE}/hits", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["counted"] is True, response.text


async def set_site(client: httpx.AsyncClient, **settings: object) -> None:
    response = await client.put(
        f"/v1/sites/{SITE}", json=settings, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code in (200, 201), response.text


class ApiRequests:
    """Every request a page makes to the api (method, path, JSON body of a POST)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: list[tuple[str, str, object]] = []

    def __call__(self, request: Request) -> None:
        if not request.url.startswith(self.base + "/"):
            return
        body = orjson.loads(request.post_data) if request.post_data else None
        self.seen.append((request.method, request.url.removeprefix(self.base), body))


# --- the block: one request per page view ------------------------------------------------


async def test_the_block_shows_exact_numbers_from_the_page_views_own_hit(
    redis_url: str, database_url: str, browser: Browser, host: HostPages
) -> None:
    settings = make_settings(redis_url, database_url)
    clock = [WEDNESDAY_NOON.timestamp()]
    async with running_api(settings, clock=lambda: clock[0]) as client:
        await register_site(client)
        # 11 views in all with the browser's: the footer total becomes the 37.409.357.
        await seed_baselines(settings, SITE, 37_409_357 - 11, {})
        # Four visitors: one view last week, two on Monday, three yesterday, four today.
        for days_back, views in ((9, 1), (2, 2), (1, 3), (0, 4)):
            clock[0] = WEDNESDAY_NOON.timestamp() - days_back * DAY_S
            for n in range(views):
                await hit(client, f"/tin-tuc/bai-{n}", visitor=f"reader-{n}")
        base = api_base(client)
        url = host.add(
            "/tin-tuc/bai-moi",
            embed_page(base, BLOCK_HTML, script_attrs='data-page="/tin-tuc/bai-moi"'),
        )
        async with browsing(browser) as context:
            api_requests = ApiRequests(base)
            context.on("request", api_requests)
            page = await open_page(context, url)
            shown = {name: await page.text(f"#{name}") for name in BLOCK}
            values = {name: await page.value(f"#{name}") for name in BLOCK}
            boxes = await page.page.locator("#boxes .vc-digit").all_inner_texts()
            state = await page.page.get_attribute("script[data-site]", "data-viewcounter-state")
            assert page.errors == []
        counts = (await client.get(f"/v1/sites/{SITE}/counts")).json()
    # Today: four readers and the browser, all online; the week from Monday; the month all.
    assert shown == {
        "online": "5",
        "today": "5",
        "yesterday": "3",
        "week": "10",
        "month": "11",
        "total": "37.409.357",
    }
    assert values["total"] == str(counts["site_views"]) == "37409357"
    assert boxes == list("37409357")
    assert state == "done"
    # One request for the page view besides the script: the hit, asking for the block.
    assert api_requests.seen == [
        ("GET", "/v1/counter.js", None),
        ("POST", f"/v1/sites/{SITE}/hits", {"page": "/tin-tuc/bai-moi", "stats": True}),
    ]


async def test_a_page_without_the_block_asks_for_no_statistics(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    base = api_base(api)
    url = host.add(
        "/bai",
        embed_page(
            base, '<b id="views" data-viewcounter="page">–</b>', script_attrs='data-page="/bai"'
        ),
    )
    async with browsing(browser) as context:
        api_requests = ApiRequests(base)
        context.on("request", api_requests)
        page = await open_page(context, url)
        assert await page.text("#views") == "1"
    assert api_requests.seen == [
        ("GET", "/v1/counter.js", None),
        ("POST", f"/v1/sites/{site}/hits", {"page": "/bai"}),
    ]


async def test_the_title_goes_with_the_hit_only_when_the_script_says_so(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    base = api_base(api)
    # A soft hyphen, a zero-width space and a bidi override: the server refuses a title with
    # any of them (and the hit with it), so the script leaves them out.
    title = "<title>Tin t\u00adức\u200b mới \u202enhất</title>"
    pages = {
        "/khong": "",
        "/tieu-de": "data-send-title",
        "/dat-ten": 'data-title=" Tên\ndo trang đặt "',
        "/dai": f'data-title="{"Đ" * 250}"',
    }
    for path, attrs in pages.items():
        html = embed_page(
            base, '<b data-viewcounter="page">–</b>', script_attrs=f'data-page="{path}" {attrs}'
        )
        host.add(path, html.replace("<title>host</title>", title))
    async with browsing(browser) as context:
        api_requests = ApiRequests(base)
        context.on("request", api_requests)
        for path in pages:
            page = await open_page(context, host.base_url + path)
            await page.page.wait_for_load_state("load")
    hits = [body for method, _, body in api_requests.seen if method == "POST"]
    assert hits == [
        {"page": "/khong"},
        {"page": "/tieu-de", "title": "Tin tức mới nhất"},
        {"page": "/dat-ten", "title": "Tên do trang đặt"},
        {"page": "/dai", "title": "Đ" * 200},
    ]
    counts = (await api.get(f"/v1/sites/{site}/counts", params={"page": list(pages)})).json()
    assert counts["pages"] == dict.fromkeys(pages, 1)  # the server took every one


# --- the demo page ----------------------------------------------------------------------


async def test_demo_page_shows_the_block_and_the_most_read_list(
    api: httpx.AsyncClient, site: str, settings: Settings, browser: Browser
) -> None:
    await seed_baselines(settings, site, 37_409_357 - 6, {})
    for visitor in "abc":
        await hit(api, DEMO_ARTICLES[0], visitor=visitor)
    for visitor in "de":
        await hit(api, DEMO_ARTICLES[1], visitor=visitor)
    with up.serve_examples("127.0.0.1", free_port(), api_base(api), site) as url:
        assert url is not None
        async with browsing(browser, viewport={"width": 1200, "height": 1100}) as context:
            demo = await open_page(context, url)
            block = {name: await demo.text(f'.stats [data-viewcounter="{name}"]') for name in BLOCK}
            labels = await demo.page.locator(".stats dt").all_inner_texts()
            heading = await demo.page.text_content(".most-read h2")  # CSS shows it uppercase
            titles = await demo.page.locator(".most-read .vc-top-title").all_inner_texts()
            views = await demo.page.locator(".most-read .vc-top-views").all_inner_texts()
            ARTIFACTS.mkdir(exist_ok=True)
            await demo.page.screenshot(path=ARTIFACTS / "demo-block.png", full_page=True)
            assert demo.errors == []
    assert labels == ["Đang truy cập", "Hôm nay", "Hôm qua", "Tuần này", "Tháng này", "Tổng"]
    # Five readers and this view, all today (whatever today's week and month).
    assert block == {
        "online": "6",
        "today": "6",
        "yesterday": "0",
        "week": "6",
        "month": "6",
        "total": "37.409.357",
    }
    assert heading == "Tin đọc nhiều"
    # The demo site learns no titles: the page ids. The article's own view (one) is listed
    # third when its hit was counted before the list was read.
    assert titles[:2] == [DEMO_ARTICLES[0], DEMO_ARTICLES[1]]
    assert titles[2:] in ([], [DEMO_ARTICLE])
    assert views[:2] == ["3", "2"]


# --- the most-read list: text only, links only on the page's origin -----------------------

HOSTILE_TITLES = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "<a href=javascript:alert(4)>bấm vào đây</a>",
    "&lt;b&gt;đậm&lt;/b&gt; &amp; <!-- chú thích -->",
    "<iframe srcdoc='<script>alert(5)</script>'></iframe>",
]


def top_list_page(base: str, limit: int) -> str:
    """A host page with a most-read list of today's top `limit` pages; its own view is of a
    page with one view, below every listed one."""
    return embed_page(
        base,
        f'<ol id="top" data-viewcounter="top" data-period="today" data-limit="{limit}">'
        "<li>Đang cập nhật…</li></ol>",
        script_attrs='data-page="/trang-doc"',
    )


def record_dialogs(context: BrowserContext) -> list[str]:
    """The messages of alert/confirm/prompt dialogs any page of `context` opens (dismissed)."""
    dialogs: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    context.on("dialog", dismiss)
    return dialogs


async def top_entries(page: Page) -> list[dict[str, object]]:
    """Each entry of #top: the tag and href of its title element, its text, its views."""
    entries: list[dict[str, object]] = await page.eval_on_selector_all(
        f"{TOP} li",
        """items => items.map(li => {
            const name = li.querySelector('.vc-top-title');
            const views = li.querySelector('.vc-top-views');
            if (!name || !views) return {text: li.textContent};  // not the widget's entry
            return {tag: name.tagName, href: name.getAttribute('href'), text: name.textContent,
                    views: views.textContent};
        })""",
    )
    return entries


async def test_hostile_titles_render_as_text_and_run_nothing(
    settings: Settings, api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    await set_site(api, learn_titles=True)
    # Title i gets len - i + 1 views: the list's order is the titles' order.
    for i, title in enumerate(HOSTILE_TITLES):
        for n in range(len(HOSTILE_TITLES) - i + 1):
            await hit(api, f"/tin-tuc/bai-{i}", visitor=f"r{n}", title=title)
    async with flusher_for(settings) as flusher:
        await flusher.flush_once()  # titles are learned through the flusher
    url = host.add("/trang-doc", top_list_page(api_base(api), len(HOSTILE_TITLES)))
    console: list[str] = []

    def log(message: ConsoleMessage) -> None:
        console.append(f"{message.type}: {message.text}")

    async with browsing(browser) as context:
        dialogs = record_dialogs(context)
        context.on("console", log)
        # Anything parsed from a title would have to get past this to go unnoticed.
        await context.add_init_script("window.__ran = []; window.alert = (m) => __ran.push(m);")
        page = await open_page(context, url)
        await page.page.wait_for_load_state("load")
        entries = await top_entries(page.page)
        elements = await page.page.eval_on_selector_all(
            f"{TOP} *", "nodes => [...new Set(nodes.map(n => n.tagName))].sort()"
        )
        everywhere = await page.page.locator("img, svg, iframe, body script").count()
        ran = await page.page.evaluate("window.__ran")
        assert page.errors == []
    assert [e["text"] for e in entries] == HOSTILE_TITLES
    assert [e["views"] for e in entries] == [str(len(HOSTILE_TITLES) - i + 1) for i in range(6)]
    assert all(e["tag"] == "A" for e in entries)  # paths: links to the page's own origin
    assert elements == ["A", "LI", "SPAN"]
    assert everywhere == 0
    assert (dialogs, ran) == ([], [])
    assert console == []


async def test_only_paths_link_and_only_to_the_pages_own_origin(
    api: httpx.AsyncClient, site: str, browser: Browser, host: HostPages
) -> None:
    # page id -> (its link, or None for plain text); listed in this order.
    expected: dict[str, str | None] = {
        "/tin-tuc/bai-a": "/tin-tuc/bai-a",
        "/tin-tuc/phạm-văn-đồng": "/tin-tuc/ph%E1%BA%A1m-v%C4%83n-%C4%91%E1%BB%93ng",
        "/": "/",
        "bai-khong-phai-duong-dan": None,
        "//evil.example/x": None,
        "/\\evil.example/x": None,  # browsers read a backslash as a slash: another host
        "javascript:alert(1)": None,
        "https://evil.example/x": None,
        "123": None,
    }
    for i, page_id in enumerate(expected):
        for n in range(len(expected) - i + 1):
            await hit(api, page_id, visitor=f"r{n}")
    url = host.add("/trang-doc", top_list_page(api_base(api), len(expected)))
    async with browsing(browser) as context:
        dialogs = record_dialogs(context)
        page = await open_page(context, url)
        entries = await top_entries(page.page)
        links = await page.page.eval_on_selector_all(f"{TOP} a", "as => as.map(a => a.href)")
        assert page.errors == []
    assert [e["text"] for e in entries] == list(expected)  # no titles: the page ids
    assert [(e["tag"], e["href"]) for e in entries] == [
        ("A", host.base_url + path) if path else ("SPAN", None) for path in expected.values()
    ]
    assert all(link.startswith(host.base_url + "/") for link in links)
    assert dialogs == []
