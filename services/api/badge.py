"""GET /v1/sites/{site}/badge.svg?page=&label=: a counter badge (reads, never counts).

The label is the caller's text inside our SVG: it is length-limited, refused when it holds
characters XML cannot carry (controls, bidi overrides, lone surrogates), and XML-escaped in
both places it appears (text and attribute). The answer also carries a CSP that forbids
scripts, for a badge opened directly rather than through <img>.
"""

from __future__ import annotations

import hashlib
import unicodedata
from xml.sax.saxutils import escape

from starlette.requests import Request
from starlette.responses import Response

from services.api.errors import ApiError
from services.counter import ids
from services.counting.live import LiveCounts

LABEL_MAX_CHARS = 40
DEFAULT_LABEL = "views"
HEIGHT_PX = 20
PADDING_PX = 6
LABEL_COLOR = "#555"
VALUE_COLOR = "#0b7285"
# Narrow no-break space: groups digits without implying a decimal mark in any language
# ("37 409 357" reads the same in Vietnamese, English and French).
GROUP_SEPARATOR = "\u202f"
HEADERS = {
    "Cache-Control": "no-cache, max-age=0",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}
_ATTR_ENTITIES = {'"': "&quot;", "'": "&apos;"}
# Rough advance widths (px) in 11 px Verdana/DejaVu Sans; close enough to size the boxes.
_NARROW = frozenset("ijlt.,:;!|'`()[]{}/\\ \u202f")
_WIDE = frozenset("mwMW@%")


def text_width(text: str) -> float:
    """Approximate width of `text` in px at the badge's font size."""
    width = 0.0
    for char in text:
        if unicodedata.combining(char):
            continue
        if unicodedata.east_asian_width(char) in ("W", "F"):
            width += 11.0
        elif char in _NARROW:
            width += 3.9
        elif char in _WIDE:
            width += 10.0
        elif char.isupper():
            width += 7.6
        else:
            width += 6.9
    return width


def label_text(raw: str | None) -> str:
    """The badge label: NFC, trimmed, printable, 1-LABEL_MAX_CHARS characters."""
    if raw is None:
        return DEFAULT_LABEL
    text = ids.page_id(raw, field="label")  # NFC, trimmed, non-empty, printable, valid UTF-8
    if len(text) > LABEL_MAX_CHARS:
        raise ApiError(
            422, "invalid_field", f"label must be at most {LABEL_MAX_CHARS} characters", "label"
        )
    return text


def group_digits(n: int) -> str:
    """37409357 -> '37 409 357' with narrow no-break spaces."""
    return f"{n:,}".replace(",", GROUP_SEPARATOR)


def render(label: str, value: str) -> str:
    """The SVG of a two-part badge; `label` and `value` are plain text (escaped here)."""
    label_w = round(text_width(label) + 2 * PADDING_PX)
    value_w = round(text_width(value) + 2 * PADDING_PX)
    total_w = label_w + value_w
    # Unique per content: badges inlined into one HTML page share one id space.
    clip = "vc" + hashlib.sha256(f"{label}\0{value}".encode()).hexdigest()[:10]
    title = escape(f"{label}: {value}")
    aria = escape(f"{label}: {value}", _ATTR_ENTITIES)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{HEIGHT_PX}" '
        f'role="img" aria-label="{aria}">'
        f"<title>{title}</title>"
        f'<clipPath id="{clip}"><rect width="{total_w}" height="{HEIGHT_PX}" rx="3"/></clipPath>'
        f'<g clip-path="url(#{clip})">'
        f'<rect width="{label_w}" height="{HEIGHT_PX}" fill="{LABEL_COLOR}"/>'
        f'<rect x="{label_w}" width="{value_w}" height="{HEIGHT_PX}" fill="{VALUE_COLOR}"/>'
        f"</g>"
        f'<g fill="#fff" text-anchor="middle" '
        f'font-family="Verdana,DejaVu Sans,Geneva,sans-serif" font-size="11">'
        f'<text x="{label_w / 2:g}" y="14">{escape(label)}</text>'
        f'<text x="{label_w + value_w / 2:g}" y="14">{escape(value)}</text>'
        f"</g></svg>"
    )


async def badge(request: Request) -> Response:
    """The site's total, or one page's with ?page=, as an SVG badge."""
    site = ids.site_id(request.path_params["site"])
    raw_page = request.query_params.get("page")
    page = ids.page_id(raw_page) if raw_page is not None else None
    label = label_text(request.query_params.get("label"))
    live: LiveCounts = request.state.live
    counts = await live.counts(site, [page] if page is not None else [])
    views = counts.pages.get(page, 0) if page is not None else counts.site_views
    return Response(
        render(label, group_digits(views)).encode(),
        media_type="image/svg+xml",
        headers=HEADERS,
    )
