"""The dashboard in headless Chromium: token asked for, charts drawn from the report routes,
the top pages table, the live total (views + baseline), the statistics block, no console
errors under its CSP. A screenshot is kept in tests/artifacts/dashboard.png."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage

from services.config import Settings
from tests.support.browser import ARTIFACTS, session_browser
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

REPORT_TOKEN = "report-token-for-editors-0123"
PAGES = {
    "/tin-tuc/ra-quan-thang-thanh-nien-2025": 9,
    "/tin-tuc/doi-thoai-voi-thanh-nien": 6,
    "/tin-tuc/hem-xanh-sach-sang-phuong-5": 4,
    "/tin-tuc/huong-dan-dich-vu-cong-truc-tuyen": 2,
}


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with session_browser() as chromium:
        yield chromium


async def seed(settings: Settings) -> int:
    """Hits on each of the last 12 days in Ho Chi Minh City, flushed; the number counted."""
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    now = datetime.now(tz).replace(hour=12, minute=0, second=0, microsecond=0)
    clock = [now.timestamp()]
    counted = 0
    async with live_counts(settings, clock) as live, flusher_for(settings) as flusher:
        await live.register(SITE, {"timezone": "Asia/Ho_Chi_Minh"}, TEST_AUTHOR)
        for back in range(12):
            clock[0] = (now - timedelta(days=back)).timestamp()
            for rank, (page, n) in enumerate(PAGES.items()):
                for _ in range(n + (back * (rank + 1)) % 5):
                    await live.hit(SITE, page, visitor=None, ip="10.0.0.1", user_agent="x")
                    counted += 1
        await flusher.flush_once()
    return counted


async def import_the_baseline(api: httpx.AsyncClient) -> None:
    """One page's baseline and the site's total, as a site moving over brings them."""
    imported = await api.post(
        f"/v1/sites/{SITE}/import",
        content=b"page,views\n/tin-tuc/ra-quan-thang-thanh-nien-2025,563\n",
        params={"site_total": "37409356"},
        headers={**ADMIN, "content-type": "text/csv"},
    )
    assert imported.status_code == 200, imported.text


async def test_dashboard_draws_charts_top_pages_and_the_live_total(
    browser: Browser, redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, report_token=REPORT_TOKEN)
    counted = await seed(settings)
    async with running_api(settings) as api:
        await import_the_baseline(api)
        page_html = await api.get(f"/dashboard/{SITE}")
        bad_site = await api.get("/dashboard/Not%20A%20Site")
        base = str(api.base_url).rstrip("/")
        context = await browser.new_context(
            user_agent=BROWSER_UA, viewport={"width": 1100, "height": 1250}, locale="en-US"
        )
        errors: list[str] = []
        try:
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            def console(message: ConsoleMessage) -> None:
                if message.type in ("error", "warning"):
                    errors.append(message.text)

            page.on("console", console)
            await page.goto(f"{base}/dashboard/{SITE}")
            await page.wait_for_selector("#login:not([hidden])")
            await page.fill("#token", "wrong-token-wrong-token")
            await page.click("#login button[type=submit]")
            await page.wait_for_selector("#login-error:has-text('report or admin')")
            errors.clear()  # the 401 the wrong token got is logged by the browser
            await page.fill("#token", REPORT_TOKEN)
            await page.click("#login button[type=submit]")
            await page.wait_for_selector("body[data-state=ready]")
            site_bars = await page.locator("#chart-site rect.bar").count()
            page_bars = await page.locator("#chart-page rect.bar").count()
            views = await page.eval_on_selector_all(
                "#chart-site rect.bar", "bars => bars.map(b => Number(b.dataset.views))"
            )
            top_pages = await page.eval_on_selector_all(
                "#top tbody td.page", "cells => cells.map(c => c.textContent)"
            )
            live_total = await page.get_attribute("#live-total", "data-value")
            live_text = await page.inner_text("#live-total")
            chosen = await page.inner_text("#page-name")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            # Another page chosen from the table redraws its chart.
            await page.click("#top tbody tr:nth-child(2) td.page")
            await page.wait_for_selector("#page-name:has-text('/tin-tuc/doi-thoai-voi-thanh-nien')")
        finally:
            await context.close()
    assert page_html.status_code == 200
    csp = page_html.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp
    assert bad_site.status_code == 422
    assert errors == []
    assert site_bars == 30 and page_bars == 30  # the last 30 days, zeros included
    assert sum(views) == counted
    assert top_pages == list(PAGES)
    assert chosen == "/tin-tuc/ra-quan-thang-thanh-nien-2025"  # the top page by default
    assert live_total == str(counted + 37_409_356)
    assert live_text == f"{counted + 37_409_356:,}"


def problem(message: ConsoleMessage) -> bool:
    """An error or warning of the page's own (the browser's 404 for /favicon.ico is none)."""
    if message.type not in ("error", "warning"):
        return False
    return not message.location.get("url", "").endswith("/favicon.ico")


async def test_dashboard_shows_the_statistics_block(
    browser: Browser, redis_url: str, database_url: str
) -> None:
    settings = make_settings(redis_url, database_url, report_token=REPORT_TOKEN)
    async with running_api(settings) as api:
        await register_site(api)
        await import_the_baseline(api)
        for visitor in ("a", "b", "c"):
            hit = await api.post(
                f"/v1/sites/{SITE}/hits", json={"page": "/tin-tuc/a", "visitor": visitor}
            )
            assert hit.json()["counted"] is True, hit.text
        base = str(api.base_url).rstrip("/")
        context = await browser.new_context(user_agent=BROWSER_UA, locale="en-US")
        errors: list[str] = []
        try:
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if problem(m) else None)
            await page.goto(f"{base}/dashboard/{SITE}")
            await page.fill("#token", REPORT_TOKEN)
            await page.click("#login button[type=submit]")
            await page.wait_for_selector("#stats[data-state=ready]", timeout=10_000)
            await page.wait_for_selector("body[data-state=ready]")
            labels = await page.locator("#stats dt").all_inner_texts()
            shown = await page.eval_on_selector_all(
                "#stats dd", "dds => dds.map(d => [d.dataset.stat, d.textContent, d.dataset.value])"
            )
            day = await page.inner_text("#stats-day")
        finally:
            await context.close()
    assert errors == []
    assert labels == ["Online now", "Today", "Yesterday", "This week", "This month", "Total"]
    # Three readers today (so this week and this month too), on top of the carried-over total.
    assert shown == [
        ["online", "3", "3"],
        ["today", "3", "3"],
        ["yesterday", "0", "0"],
        ["this_week", "3", "3"],
        ["this_month", "3", "3"],
        ["total", "37,409,359", "37409359"],
    ]
    assert day.endswith(" (Asia/Ho_Chi_Minh)")


async def test_dashboard_files_are_served_under_the_csp(api: httpx.AsyncClient) -> None:
    script = await api.get("/v1/dashboard.js")
    style = await api.get("/v1/dashboard.css")
    assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"
