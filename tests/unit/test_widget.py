"""The website's script and badge as served bytes: no eval-like constructs in counter.js, and an
SVG badge that escapes any label."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import pytest

from services.api import badge, widget
from tests.support import svg

pytestmark = pytest.mark.unit


# Ways a script can turn a string into markup or code; counter.js uses none of them.
HTML_OR_CODE_FROM_TEXT = (
    "eval(",
    "new Function",
    "Function(",
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "createContextualFragment",
    "DOMParser",
    "document.write",
    "srcdoc",
    "setHTML",
    "parseHTMLUnsafe",
    'setAttribute("style',
    ".style.",
    'setAttribute("on',
    'setAttribute("href',
)


def test_counter_js_has_no_eval_or_html_parsing_constructs() -> None:
    text = widget.SCRIPT.decode()
    assert [f for f in HTML_OR_CODE_FROM_TEXT if f in text] == []
    # Timers only ever get functions (a string would be evaluated).
    assert re.findall(r"setTimeout\(\s*[\"'`]", text) == []


def test_counter_js_stays_small() -> None:
    # Gzipped: 3.4 KB before the statistics block, the most-read list and titles; 5.0 KB with.
    assert len(widget.SCRIPT_GZIP) < 5.5 * 1024


def test_counter_js_writes_data_as_text_only() -> None:
    text = widget.SCRIPT.decode()
    # Data reaches the page through textContent and createTextNode, nothing else.
    assert "textContent" in text and "createTextNode" in text
    # The most-read list's links: a path on the page's own origin, checked after resolving.
    assert "new URL(id, location.origin)" in text
    assert "url.origin === location.origin" in text


def test_counter_js_names_every_block_element_and_answer_field() -> None:
    text = widget.SCRIPT.decode()
    block = re.search(r"var STATS = \{(.*?)\};", text, re.S)
    assert block is not None
    pairs = dict(re.findall(r"(\w+): \"(\w+)\"", block.group(1)))
    assert pairs == {
        "online": "online",
        "today": "today",
        "yesterday": "yesterday",
        "week": "this_week",
        "month": "this_month",
        "total": "total",
    }


@pytest.mark.parametrize("label", svg.HOSTILE_LABELS)
def test_badge_escapes_hostile_labels(label: str) -> None:
    root, texts = svg.texts(badge.render(label, "37\u202f409\u202f357"))
    assert texts == [label, "37\u202f409\u202f357"]
    assert root.get("aria-label") == f"{label}: 37\u202f409\u202f357"
    assert root.findtext(f"{svg.SVG}title") == f"{label}: 37\u202f409\u202f357"
    tags = {element.tag.removeprefix(svg.SVG) for element in root.iter()}
    assert tags == {"svg", "title", "clipPath", "rect", "g", "text"}
    assert all(not name.startswith("on") for e in root.iter() for name in e.attrib)


def test_badge_grows_with_its_text() -> None:
    short = ElementTree.fromstring(badge.render("views", "1"))
    long = ElementTree.fromstring(badge.render("lượt xem trang này", "37\u202f409\u202f357"))
    assert int(short.get("width", "0")) < int(long.get("width", "0"))
    assert badge.group_digits(37409357) == "37\u202f409\u202f357"
    assert badge.group_digits(0) == "0"
