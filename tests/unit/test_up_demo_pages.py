"""The demo page server of `viewcounter up`: the example page pointed at the api and site, and
nothing outside the examples directory."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.cli import up
from services.cli.localservers import free_port

pytestmark = pytest.mark.unit


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def test_up_serves_the_demo_page_pointed_at_its_api_and_site() -> None:
    api_base = "http://127.0.0.1:9999"
    with up.serve_examples("127.0.0.1", free_port(), api_base, "quan11") as url:
        assert url is not None
        status, headers, body = await asyncio.to_thread(_get, url)
        css_status, _, css = await asyncio.to_thread(_get, url + "portal.css")
        outside, _, _ = await asyncio.to_thread(_get, url + "../pyproject.toml")
    page = body.decode()
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert f'src="{api_base}/v1/counter.js" data-site="quan11"' in page
    assert f"{api_base}/v1/sites/quan11/hit.gif?page=" in page
    assert up.DEMO_API_BASE not in page and 'data-site="demo"' not in page
    assert "SỐ LƯỢT TRUY CẬP" in page and "Số lượt người xem" in page
    csp = headers["Content-Security-Policy"]
    assert f"script-src {api_base};" in csp and "unsafe-inline" not in csp
    assert css_status == 200 and b".vc-digit" in css
    assert outside == 404


def test_up_without_an_examples_directory_serves_nothing(tmp_path: Path) -> None:
    with up.serve_examples("127.0.0.1", 0, "http://x", "demo", tmp_path / "missing") as url:
        assert url is None


async def test_the_demo_server_lists_no_directories(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "secret.txt").write_text("x")
    with up.serve_examples("127.0.0.1", 0, "http://x", "demo", tmp_path) as url:
        assert url is not None
        root, _, _ = await asyncio.to_thread(_get, url)
        sub, _, _ = await asyncio.to_thread(_get, url + "sub/")
    assert (root, sub) == (404, 404)
