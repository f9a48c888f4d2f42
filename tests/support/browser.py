"""Browser-test helpers: one headless Chromium per session, a server for host pages, and
host pages with the embed, opened in a profile that looks like a person's Chrome and watched
for errors and requests.

Chromium is Debian's (`apt-get install chromium`; Playwright cannot download its own here),
driven by Playwright through `executable_path`. Without it the browser tests skip, except
under CI (CI=true), where they fail: CI must have installed it (.ci/run does).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from services.cli.localservers import free_port
from services.config import Settings
from tests.support.stack import BROWSER_UA, SITE

CHROMIUM_ENV = "VIEWCOUNTER_CHROMIUM"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
ARTIFACTS = Path(__file__).parent.parent / "artifacts"
VALUE = "data-viewcounter-value"
DONE = "script[data-viewcounter-state]"


def chromium_path() -> str | None:
    """The Chromium to drive: $VIEWCOUNTER_CHROMIUM, else Debian's, else one on PATH."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@asynccontextmanager
async def session_browser() -> AsyncIterator[Browser]:
    """Headless Chromium for the whole session; skip (fail under CI) when there is none."""
    path = chromium_path()
    if path is None:
        reason = (
            "no Chromium for the browser tests: `apt-get install chromium` "
            f"(or set {CHROMIUM_ENV} to a Chromium binary)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it", pytrace=False)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class HostPages:
    """A web site of our own making (another origin than the api): path -> page."""

    base_url: str = ""
    pages: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    served: list[str] = field(default_factory=list)

    def add(self, path: str, html: str, csp: str | None = None) -> str:
        """Serve `html` at `path` (query and fragment ignored); its URL."""
        headers = {"Cache-Control": "no-store"}
        if csp is not None:
            headers["Content-Security-Policy"] = csp
        self.pages[path] = (html, headers)
        return self.base_url + path

    async def _serve(self, request: Request) -> Response:
        self.served.append(request.url.path)
        if request.url.path == "/favicon.ico":
            return Response(status_code=204)
        page = self.pages.get(request.url.path)
        if page is None:
            return PlainTextResponse("no such page", status_code=404)
        return HTMLResponse(page[0], headers=page[1])


@asynccontextmanager
async def serve_host_pages() -> AsyncIterator[HostPages]:
    """HostPages under uvicorn on a free port, in this event loop."""
    pages = HostPages()
    app = Starlette(routes=[Route("/{path:path}", pages._serve, methods=["GET"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    pages.base_url = f"http://127.0.0.1:{port}"
    try:
        yield pages
    finally:
        server.should_exit = True
        await task


async def seed_baselines(
    settings: Settings, site: str, site_total: int, pages: dict[str, int]
) -> None:
    """Give `site` legacy totals (baselines, as carried over from an old counter) and make Redis
    reload them from Postgres, as after Redis lost its data."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("UPDATE site_views SET baseline = $2 WHERE site = $1", site, site_total)
        for page, baseline in pages.items():
            await conn.execute(
                "INSERT INTO page_views (site, page, baseline) VALUES ($1, $2, $3) "
                "ON CONFLICT (site, page) DO UPDATE SET baseline = EXCLUDED.baseline",
                site,
                page,
                baseline,
            )
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def api_base(client: httpx.AsyncClient) -> str:
    """The api's origin, as a host page names it."""
    return str(client.base_url).rstrip("/")


@asynccontextmanager
async def browsing(browser: Browser, **options: object) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile that looks like a person's Chrome."""
    context = await browser.new_context(user_agent=BROWSER_UA, **options)  # type: ignore[arg-type]
    try:
        yield context
    finally:
        await context.close()


class Watched:
    """A page and what went wrong in it: uncaught errors, console errors, requests sent."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)
        page.on("request", lambda request: self.requests.append(request.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    async def value(self, selector: str) -> str | None:
        return await self.page.get_attribute(selector, VALUE)

    async def text(self, selector: str) -> str:
        return await self.page.inner_text(selector)


async def open_page(context: BrowserContext, url: str, *, wait_widget: bool = True) -> Watched:
    """Open `url`; wait until counter.js has finished its hit and reads (done or failed)."""
    watched = Watched(await context.new_page())
    await watched.page.goto(url)
    if wait_widget:
        await watched.page.wait_for_selector(DONE, state="attached")
    return watched


async def reload(watched: Watched) -> None:
    """Reload and wait for counter.js as `open_page` does."""
    await watched.page.reload()
    await watched.page.wait_for_selector(DONE, state="attached")


def embed_page(
    api: str,
    body: str,
    *,
    script_attrs: str = "",
    head: str = "",
    lang: str = "vi",
    site: str = SITE,
) -> str:
    """A host page with the two-line embed."""
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>host</title>'
        f"{head}"
        f'<script async src="{api}/v1/counter.js" data-site="{site}" {script_attrs}></script>'
        f"</head><body><h1>Trang tin</h1>{body}</body></html>"
    )
