"""The dashboard in headless Chromium, for a site's editors: sign-in with the site and its
report credential (tests/support/credentials.py), charts drawn from the report routes with
their tables, the top pages, the live total (views + baseline), the statistics block, only
the signed-in site ever asked for, in English and in Vietnamese (numbers, dates, the switch),
axe-core finding nothing serious or critical in either language, and no console errors
under its CSP. Screenshots are kept in tests/artifacts/dashboard.png and dashboard-vi.png
(copied to docs/)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page

from services.config import Settings
from tests.support.axe import serious_violations
from tests.support.browser import ARTIFACTS, session_browser
from tests.support.credentials import report_credential, report_settings
from tests.support.stack import (
    ADMIN,
    BROWSER_UA,
    SITE,
    TEST_AUTHOR,
    flusher_for,
    live_counts,
    make_settings,
    register_site,
    running_api,
)

PAGES = {
    "/tin-tuc/ra-quan-thang-thanh-nien-2025": 9,
    "/tin-tuc/doi-thoai-voi-thanh-nien": 6,
    "/tin-tuc/hem-xanh-sach-sang-phuong-5": 4,
    "/tin-tuc/huong-dan-dich-vu-cong-truc-tuyen": 2,
}
# Another district's portal on the same service: its editors' data, never shown here.
OTHER_SITE = "quan3"
OTHER_PAGE = "/tin-tuc/chi-cua-quan-3"
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
SITE_TOTAL = 37_409_356
VI_STATS = ["Đang truy cập", "Hôm nay", "Hôm qua", "Tuần này", "Tháng này", "Tổng cộng"]
EN_STATS = ["Online now", "Today", "Yesterday", "This week", "This month", "Total"]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with session_browser() as chromium:
        yield chromium


async def seed(settings: Settings) -> int:
    """Hits on each of the last 12 days in Ho Chi Minh City, flushed, and some on another
    site; the number counted on SITE."""
    now = datetime.now(HCM).replace(hour=12, minute=0, second=0, microsecond=0)
    clock = [now.timestamp()]
    counted = 0
    async with live_counts(settings, clock) as live, flusher_for(settings) as flusher:
        await live.register(SITE, {"timezone": "Asia/Ho_Chi_Minh"}, TEST_AUTHOR)
        await live.register(OTHER_SITE, {"timezone": "Asia/Ho_Chi_Minh"}, TEST_AUTHOR)
        for back in range(12):
            clock[0] = (now - timedelta(days=back)).timestamp()
            for rank, (page, n) in enumerate(PAGES.items()):
                for _ in range(n + (back * (rank + 1)) % 5):
                    await live.hit(SITE, page, visitor=None, ip="10.0.0.1", user_agent="x")
                    counted += 1
            await live.hit(OTHER_SITE, OTHER_PAGE, visitor=None, ip="10.0.0.1", user_agent="x")
        await flusher.flush_once()
    return counted


async def import_the_baseline(api: httpx.AsyncClient) -> None:
    """One page's baseline and the site's total, as a site moving over brings them."""
    imported = await api.post(
        f"/v1/sites/{SITE}/import",
        content=b"page,views\n/tin-tuc/ra-quan-thang-thanh-nien-2025,563\n",
        params={"site_total": str(SITE_TOTAL)},
        headers={**ADMIN, "content-type": "text/csv"},
    )
    assert imported.status_code == 200, imported.text


def problem(message: ConsoleMessage) -> bool:
    """An error or warning of the page's own (the browser's 404 for /favicon.ico is none)."""
    if message.type not in ("error", "warning"):
        return False
    return not message.location.get("url", "").endswith("/favicon.ico")


@dataclass
class Watched:
    """A dashboard tab and what went wrong in it; the api paths it asked for."""

    page: Page
    errors: list[str]
    api_paths: list[str]

    refused: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if not problem(message):
            return
        url = message.location.get("url", "")
        if "status of 40" in message.text and url:
            self.refused.append(urlsplit(url).path)  # the browser logs every 401 and 404
        else:
            self.errors.append(message.text)


async def open_tab(context: BrowserContext, url: str) -> Watched:
    page = await context.new_page()
    watched = Watched(page, [], [])
    page.on("pageerror", lambda exc: watched.errors.append(str(exc)))
    page.on("console", watched.console)
    page.on("request", lambda r: watched.api_paths.append(urlsplit(r.url).path))
    await page.goto(url)
    return watched


async def sign_in(tab: Watched, site: str, secret: str) -> None:
    page = tab.page
    await page.wait_for_selector("#login:not([hidden])")
    await page.fill("#login-site", site)
    await page.fill("#token", secret)
    await page.click("#login button[type=submit]")


async def day_rows(page: Page, table: str) -> list[tuple[str, str, str, int]]:
    """(ISO day, day as shown, views as shown, views) of a chart's table alternative."""
    rows: list[list[str]] = await page.eval_on_selector_all(
        f"{table} tbody tr",
        "rows => rows.map(r => [r.cells[0].dataset.day, r.cells[0].textContent,"
        " r.cells[1].textContent, r.cells[1].dataset.views])",
    )
    return [(day, shown, text, int(views)) for day, shown, text, views in rows]


async def test_dashboard_signs_in_to_one_site_and_draws_charts_tables_and_the_live_total(
    browser: Browser, redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, **report_settings())
    counted = await seed(settings)
    async with running_api(settings) as api:
        await import_the_baseline(api)
        secret = await report_credential(api, SITE)
        page_html = await api.get(f"/dashboard/{SITE}")
        sign_in_html = await api.get("/dashboard")
        bad_site = await api.get("/dashboard/Not%20A%20Site")
        base = str(api.base_url).rstrip("/")
        context = await browser.new_context(
            user_agent=BROWSER_UA, viewport={"width": 1100, "height": 1400}, locale="en-US"
        )
        try:
            # Signed out, at /dashboard: the sign-in asks for the site and the key.
            tab = await open_tab(context, f"{base}/dashboard")
            page = tab.page
            assert await page.input_value("#login-site") == ""
            await sign_in(tab, SITE, "wrong-token-wrong-token")
            await page.wait_for_selector("#login-error:has-text('does not open the reports')")
            wrong_key = await page.inner_text("#login-error")
            await sign_in(tab, "nosuchsite", secret)
            await page.wait_for_selector("#login-error:has-text('No site')")
            unknown = await page.inner_text("#login-error")
            await sign_in(tab, SITE, secret)
            await page.wait_for_selector("body[data-state=ready]")
            await page.wait_for_selector("#stats[data-state=ready]")
            path = urlsplit(page.url).path
            site_bars = await page.locator("#chart-site rect.bar").count()
            page_bars = await page.locator("#chart-page rect.bar").count()
            views = await page.eval_on_selector_all(
                "#chart-site rect.bar", "bars => bars.map(b => Number(b.dataset.views))"
            )
            login_shown = await page.is_visible("#login")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            await page.click("#chart-site + details summary")
            site_table = await day_rows(page, "#table-site")
            site_caption = await page.inner_text("#table-site caption")
            page_table = await day_rows(page, "#table-page")
            top_pages = await page.eval_on_selector_all(
                "#top tbody td.page", "cells => cells.map(c => c.textContent)"
            )
            live_total = await page.get_attribute("#live-total", "data-value")
            live_text = await page.inner_text("#live-total")
            chosen = await page.inner_text("#page-name")
            accessibility = await serious_violations(page)
            # Another page chosen from the table (a button: keyboard too) redraws its chart.
            await page.click("#top tbody tr:nth-child(2) td.page button")
            await page.wait_for_selector("#page-name:has-text('/tin-tuc/doi-thoai-voi-thanh-nien')")
            visible = await page.inner_text("body")
        finally:
            await context.close()
    assert page_html.status_code == 200 and sign_in_html.status_code == 200
    csp = page_html.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp
    assert bad_site.status_code == 422
    assert tab.errors == []
    # Refused: the wrong key (401) and the unknown site (404), nothing else.
    assert {p.split("/")[3] for p in tab.refused} == {SITE, "nosuchsite"}, tab.refused
    assert wrong_key == (
        f"This key does not open the reports of {SITE}: sign in with a report or admin key "
        "of this site."
    )
    assert unknown == "No site nosuchsite for this key."
    assert path == f"/dashboard/{SITE}" and not login_shown
    assert site_bars == 30 and page_bars == 30  # the last 30 local days, zeros included
    assert sum(views) == counted
    # The table alternatives hold the charts' numbers, day by day.
    assert [row[3] for row in site_table] == views
    assert len(page_table) == 30
    today = datetime.now(HCM).date()
    assert site_table[-1][0] == today.isoformat()
    assert site_table[-1][1] == f"{today:%b} {today.day}, {today.year}"
    first = today - timedelta(days=29)
    assert site_caption == (
        f"Views per day of {SITE}, {first:%b} {first.day}, {first.year} – "
        f"{today:%b} {today.day}, {today.year}"
    )
    assert top_pages == list(PAGES)
    assert chosen == "/tin-tuc/ra-quan-thang-thanh-nien-2025"  # the top page by default
    assert live_total == str(counted + SITE_TOTAL)
    assert live_text == f"{counted + SITE_TOTAL:,}"
    assert accessibility == [], accessibility
    # Only the signed-in site: nothing of the other district was asked for or shown.
    asked = {p for p in tab.api_paths if p.startswith("/v1/sites/")}
    assert asked and all(
        p.startswith((f"/v1/sites/{SITE}/", "/v1/sites/nosuchsite/")) for p in asked
    ), asked
    assert OTHER_SITE not in visible and OTHER_PAGE not in visible


def vi_date(day: date) -> str:
    return f"{day:%d/%m/%Y}"


async def test_dashboard_speaks_vietnamese_to_a_vietnamese_browser_and_switches_to_english(
    browser: Browser, redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, **report_settings())
    counted = await seed(settings)
    ARTIFACTS.mkdir(exist_ok=True)
    async with running_api(settings) as api:
        await import_the_baseline(api)
        secret = await report_credential(api, SITE)
        base = str(api.base_url).rstrip("/")
        context = await browser.new_context(
            user_agent=BROWSER_UA, viewport={"width": 1100, "height": 1400}, locale="vi-VN"
        )
        try:
            tab = await open_tab(context, f"{base}/dashboard/{SITE}")
            page = tab.page
            await page.wait_for_selector("#login:not([hidden])")
            login_texts = await page.locator("#login label, #login button").all_inner_texts()
            prefilled = await page.input_value("#login-site")
            login_accessibility = await serious_violations(page)
            await sign_in(tab, SITE, secret)
            await page.wait_for_selector("body[data-state=ready]")
            await page.wait_for_selector("#stats[data-state=ready]")
            lang = await page.get_attribute("html", "lang")
            labels = await page.locator("#stats dt").all_inner_texts()
            total = await page.inner_text("#stats dd[data-stat=total]")
            live_text = await page.inner_text("#live-total")
            stats_day = await page.inner_text("#stats-day")
            headings = await page.locator("#main h2").all_inner_texts()
            site_sum = await page.inner_text("#site-sum")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-vi.png"), full_page=True)
            await page.click("#chart-site + details summary")
            site_table = await day_rows(page, "#table-site")
            table_heads = await page.locator("#table-site thead th").all_inner_texts()
            top_heads = await page.locator("#top thead th").all_inner_texts()
            share = await page.inner_text("#top tbody tr:first-child td:last-child")
            accessibility = await serious_violations(page)
            fields = (await page.input_value("#from"), await page.input_value("#to"))
            # A week typed as dd/mm/yyyy; then a day that does not exist.
            week_from = datetime.now(HCM).date() - timedelta(days=6)
            await page.fill("#from", vi_date(week_from))
            await page.click("#range button[type=submit]")
            await page.wait_for_selector("#chart-site[data-bars='7']")
            week = await day_rows(page, "#table-site")
            await page.fill("#from", "31/02/2026")
            await page.click("#range button[type=submit]")
            await page.wait_for_selector("#error:has-text('31/02/2026')")
            bad_day = await page.inner_text("#error")
            invalid = await page.get_attribute("#from", "aria-invalid")
            await page.fill("#from", vi_date(week_from))
            await page.click("#range button[type=submit]")
            await page.wait_for_selector("#from[aria-invalid=false]")
            # The switch: English now, and still after a reload (remembered).
            await page.select_option("#lang", "en")
            en_labels = await page.locator("#stats dt").all_inner_texts()
            en_live = await page.inner_text("#live-total")
            en_day = (await day_rows(page, "#table-site"))[-1][1]
            en_fields = (await page.input_value("#from"), await page.input_value("#to"))
            await page.reload()
            await page.wait_for_selector("body[data-state=ready]")
            await page.wait_for_selector("#stats[data-state=ready]")
            reloaded_lang = await page.get_attribute("html", "lang")
            reloaded_labels = await page.locator("#stats dt").all_inner_texts()
            en_accessibility = await serious_violations(page)
        finally:
            await context.close()
    assert tab.errors == [] and tab.refused == []
    assert prefilled == SITE
    assert login_texts == [
        "Trang web",
        "Khóa truy cập (khóa báo cáo hoặc khóa quản trị của trang web)",
        "Đăng nhập",
    ]
    assert login_accessibility == [], login_accessibility
    assert lang == "vi"
    assert labels == VI_STATS
    # vi-VN numbers: dots between thousands (Chromium's Intl, as the editors' browsers).
    live = counted + SITE_TOTAL
    assert live_text == f"{live:,}".replace(",", ".")
    assert re.fullmatch(r"\d{2}\.\d{3}\.\d{3}", total)
    today = datetime.now(HCM).date()
    assert stats_day == f"{vi_date(today)} (Asia/Ho_Chi_Minh)"
    assert [h.split(" ")[0:3] for h in headings] == [
        ["Khối", "thống", "kê"],
        ["Lượt", "xem", "theo"],
        ["Trang", "/tin-tuc/ra-quan-thang-thanh-nien-2025", headings[2].split(" ")[2]],
        ["Trang", "xem", "nhiều"],
    ]
    assert site_sum == f"{counted:,} lượt xem".replace(",", ".")
    assert table_heads == ["Ngày", "Lượt xem"]
    assert top_heads == ["#", "Trang", "Lượt xem", "Tỷ lệ"]
    assert re.fullmatch(r"\d{1,2},\d%", share), share  # vi-VN: a decimal comma
    # dd/mm/yyyy days in the table alternative, one per local day.
    assert [row[1] for row in site_table] == [
        vi_date(date.fromisoformat(row[0])) for row in site_table
    ]
    assert site_table[-1][1] == vi_date(today)
    assert sum(row[3] for row in site_table) == counted
    assert accessibility == [], accessibility
    assert fields == (vi_date(today - timedelta(days=29)), vi_date(today))
    assert [row[0] for row in week] == [
        (week_from + timedelta(days=n)).isoformat() for n in range(7)
    ]
    assert bad_day == "Ngày không hợp lệ: 31/02/2026 (viết dạng dd/mm/yyyy)."
    assert invalid == "true"
    assert en_fields == (week_from.isoformat(), today.isoformat())
    assert en_labels == EN_STATS and en_live == f"{live:,}"
    assert en_day == f"{today:%b} {today.day}, {today.year}"
    assert (reloaded_lang, reloaded_labels) == ("en", EN_STATS)
    assert en_accessibility == [], en_accessibility


async def test_dashboard_shows_the_statistics_block(
    browser: Browser, redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, **report_settings())
    async with running_api(settings) as api:
        await register_site(api)
        await import_the_baseline(api)
        secret = await report_credential(api, SITE)
        for visitor in ("a", "b", "c"):
            hit = await api.post(
                f"/v1/sites/{SITE}/hits", json={"page": "/tin-tuc/a", "visitor": visitor}
            )
            assert hit.json()["counted"] is True, hit.text
        base = str(api.base_url).rstrip("/")
        context = await browser.new_context(user_agent=BROWSER_UA, locale="en-US")
        try:
            tab = await open_tab(context, f"{base}/dashboard/{SITE}")
            page = tab.page
            await sign_in(tab, SITE, secret)
            await page.wait_for_selector("#stats[data-state=ready]", timeout=10_000)
            await page.wait_for_selector("body[data-state=ready]")
            labels = await page.locator("#stats dt").all_inner_texts()
            shown = await page.eval_on_selector_all(
                "#stats dd", "dds => dds.map(d => [d.dataset.stat, d.textContent, d.dataset.value])"
            )
            day = await page.inner_text("#stats-day")
        finally:
            await context.close()
    assert tab.errors == [] and tab.refused == []
    assert labels == EN_STATS
    # Three readers today (so this week and this month too), on top of the carried-over total.
    assert shown == [
        ["online", "3", "3"],
        ["today", "3", "3"],
        ["yesterday", "0", "0"],
        ["this_week", "3", "3"],
        ["this_month", "3", "3"],
        ["total", "37,409,359", "37409359"],
    ]
    today = datetime.now(HCM).date()
    assert day == f"{today:%b} {today.day}, {today.year} (Asia/Ho_Chi_Minh)"


async def test_dashboard_files_are_served_under_the_csp(api: httpx.AsyncClient) -> None:
    script = await api.get("/v1/dashboard.js")
    style = await api.get("/v1/dashboard.css")
    assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"


async def test_the_accessibility_check_finds_serious_violations(browser: Browser) -> None:
    """The check above can fail: an unlabelled field and an image without text are found."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.set_content(
            '<!doctype html><html lang="en"><head><title>t</title></head><body><main>'
            '<input type="text"><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
            "</main></body></html>"
        )
        found = await serious_violations(page)
    finally:
        await context.close()
    assert {v["id"] for v in found} >= {"label", "image-alt"}, found
