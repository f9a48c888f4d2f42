"""Reading the SVG badge in tests, and labels that try to break out of it."""

from __future__ import annotations

from xml.etree import ElementTree

SVG = "{http://www.w3.org/2000/svg}"
# Labels an admin or a page could pass: markup, quotes, entities, Vietnamese.
HOSTILE_LABELS = [
    '<script>alert("x")</script>',
    '"><svg onload=alert(1)>',
    "a & b ]]> <![CDATA[ x",
    'it\'s "quoted"',
    "Số lượt xem",
    "&amp; &#x3C; &lt;",
]


def texts(svg: str) -> tuple[ElementTree.Element, list[str]]:
    """The badge's root element (it must be well-formed XML, or this raises) and its texts."""
    root = ElementTree.fromstring(svg)
    return root, [t.text or "" for t in root.iter(f"{SVG}text")]
