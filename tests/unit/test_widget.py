"""The website's script and badge as served bytes: no eval-like constructs in counter.js, and an
SVG badge that escapes any label."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from services.api import badge, widget
from tests.support import svg

pytestmark = pytest.mark.unit




def test_counter_js_has_no_eval_or_inline_code_constructs() -> None:
    text = widget.SCRIPT.decode()
    forbidden = ("eval(", "new Function", "innerHTML", 'setAttribute("style', "document.write")
    assert [f for f in forbidden if f in text] == []
    assert len(widget.SCRIPT_GZIP) < 4096


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
