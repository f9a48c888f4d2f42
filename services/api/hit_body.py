"""Parsing of a hit's body: JSON, also when a browser's sendBeacon labels it text/plain."""

from __future__ import annotations

from dataclasses import dataclass

from services.api.errors import ApiError
from services.api.json_body import json_object
from services.counter import ids

VISITOR_MAX_CHARS = 128
URL_MAX_CHARS = 2048
# sendBeacon sends text/plain; curl -d sends form-urlencoded; both carry our JSON here.
ACCEPTED_MEDIA_TYPES = frozenset(
    {"", "application/json", "text/plain", "application/x-www-form-urlencoded"}
)


@dataclass(frozen=True, slots=True)
class HitBody:
    """A validated hit."""

    page: str
    visitor: str | None = None
    url: str | None = None
    referrer: str | None = None
    title: str | None = None  # the page's title, learned where the site learns titles
    stats: bool = False  # the answer also carries the site's statistics block


def _optional_text(data: dict[str, object], name: str, max_chars: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"{name} must be a string", name)
    if len(value) > max_chars:
        raise ApiError(422, "invalid_field", f"{name} must be at most {max_chars} characters", name)
    return value


def parse(content_type: str | None, raw: bytes) -> HitBody:
    """The hit in `raw`, or ApiError naming what is wrong with it."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in ACCEPTED_MEDIA_TYPES:
        raise ApiError(
            415, "unsupported_media_type", "send JSON as application/json or text/plain", "body"
        )
    data = json_object(raw)
    if "page" not in data:
        raise ApiError(422, "missing_field", "page is required", "page")
    stats = data.get("stats")
    if stats is not None and not isinstance(stats, bool):
        raise ApiError(422, "invalid_field", "stats must be true or false", "stats")
    return HitBody(
        page=ids.page_id(data["page"]),
        visitor=_optional_text(data, "visitor", VISITOR_MAX_CHARS),
        url=_optional_text(data, "url", URL_MAX_CHARS),
        referrer=_optional_text(data, "referrer", URL_MAX_CHARS),
        title=_title(data.get("title")),
        stats=stats is True,
    )


def _title(value: object) -> str | None:
    """The hit's title, validated whatever the site's settings (a malformed body is one);
    absent, null or blank: none."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    return ids.title(value)
