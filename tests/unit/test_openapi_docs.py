"""The api's own /docs works without the internet: Swagger UI's files are served by the app.

Needs no server: the app is built from settings and never started (its lifespan, which opens
Redis and Postgres, does not run); /docs and its files do not touch either.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from services.api.app import create_app
from tests.support.stack import BROWSER_UA, make_settings

pytestmark = pytest.mark.unit

# src="..." or href="..." in the page's tags, and the document's URL in its inline script.
_ASSET = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]*)\"""")
_OPENAPI_URL = re.compile(r"""\burl: '([^']*)'""")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings("redis://unused", "postgresql://unused"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api.internal", headers={"user-agent": BROWSER_UA}
    ) as c:
        yield c


async def test_docs_page_loads_nothing_from_another_host(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "cdn.jsdelivr.net" not in html
    assert "fastapi.tiangolo.com" not in html
    assert re.search(r"https?://|\"//|'//", html) is None, html
    assets = _ASSET.findall(html)
    # The stylesheet, the favicon and the Swagger UI script.
    assert len(assets) == 3, assets
    for url in assets:
        assert url.startswith("/docs-assets/"), url
        answer = await client.get(url)
        assert answer.status_code == 200, url
        assert answer.content, url


async def test_docs_page_names_a_document_and_a_swagger_ui_that_can_show_it(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text
    (openapi_url,) = _OPENAPI_URL.findall(html)
    document = (await client.get(openapi_url)).json()
    assert document["openapi"].startswith("3.1.")
    (script,) = [u for u in _ASSET.findall(html) if u.endswith(".js")]
    bundle = (await client.get(script)).text
    # Swagger UI 5 and later render OpenAPI 3.1; Swagger UI 4 shows "Unable to render this
    # definition" instead (it has no notion of 3.1 at all).
    assert "isOAS31" in bundle


async def test_oauth2_redirect_page_is_served_and_static_misses_are_json_404s(
    client: httpx.AsyncClient,
) -> None:
    redirect = await client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert redirect.headers["content-type"].startswith("text/html")
    assert re.search(r"https?://", redirect.text) is None
    missing = await client.get("/docs-assets/no-such-file.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
