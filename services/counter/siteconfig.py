"""A site's own counting settings: time zone, dedupe window, page rules, allowed origins.

Kept in Postgres (`sites`) and copied into the site's Redis hash when the site is loaded or
changed, so the hit path reads them without Postgres. Values an admin sends are checked here.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import orjson

MAX_DEDUPE_WINDOW_S = 7 * 86400
MAX_PATTERNS = 100
MAX_PATTERN_CHARS = 512
MAX_ORIGINS = 100
MAX_ORIGIN_CHARS = 255
DEFAULT_PORTS = {"http": 80, "https": 443}


class InvalidSetting(ValueError):
    """An admin-supplied setting is not acceptable; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Everything about a site that decides whether a hit counts.

    `dedupe_window` and `max_pages` None mean the service defaults. A site with page rules
    (`registered_pages_only` or `page_patterns`) counts a page only when it is registered
    (already has a row in `page_views`) or matches one of the patterns. An empty
    `allowed_origins` lets any web page send hits and read counts. `public_top` publishes the
    most-read list (GET .../top); `learn_titles` takes page titles from hits.
    """

    timezone: str = "UTC"
    dedupe_window: int | None = None
    max_pages: int | None = None
    registered_pages_only: bool = False
    page_patterns: tuple[str, ...] = field(default=())
    allowed_origins: tuple[str, ...] = field(default=())
    public_top: bool = True
    learn_titles: bool = False

    def to_json(self) -> str:
        """The form kept in Redis (the site hash's `cfg` field)."""
        return orjson.dumps(self.as_dict()).decode()

    def as_dict(self) -> dict[str, Any]:
        """Field name -> value, as the admin API shows them."""
        return {
            "timezone": self.timezone,
            "dedupe_window": self.dedupe_window,
            "max_pages": self.max_pages,
            "registered_pages_only": self.registered_pages_only,
            "page_patterns": list(self.page_patterns),
            "allowed_origins": list(self.allowed_origins),
            "public_top": self.public_top,
            "learn_titles": self.learn_titles,
        }

    @classmethod
    def from_json(cls, text: str | None, timezone: str) -> SiteConfig:
        """Read the Redis form; anything missing or unreadable falls back to the defaults."""
        try:
            data = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        try:
            return cls.from_values({**data, "timezone": timezone})
        except InvalidSetting:
            return cls(timezone=timezone)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> SiteConfig:
        """A config from field values (as stored or as sent by an admin), checked."""
        return cls(
            timezone=values.get("timezone") or "UTC",
            dedupe_window=_optional_int(
                values.get("dedupe_window"), "dedupe_window", MAX_DEDUPE_WINDOW_S
            ),
            max_pages=_optional_int(values.get("max_pages"), "max_pages", 2**31 - 1),
            registered_pages_only=_bool(
                values.get("registered_pages_only", False), "registered_pages_only"
            ),
            page_patterns=page_patterns(values.get("page_patterns", [])),
            allowed_origins=origins(values.get("allowed_origins", [])),
            public_top=_bool(values.get("public_top", True), "public_top"),
            learn_titles=_bool(values.get("learn_titles", False), "learn_titles"),
        )

    @property
    def restricts_pages(self) -> bool:
        """Whether only some pages may be counted."""
        return self.registered_pages_only or bool(self.page_patterns)

    def matches_pattern(self, page: str) -> bool:
        """Whether `page` matches one of the site's page patterns."""
        regex = _compiled(self.page_patterns)
        return regex is not None and regex.fullmatch(page) is not None

    def allows_origin(self, origin: str) -> bool:
        """Whether a browser page from `origin` may send hits and read counts."""
        return not self.allowed_origins or origin in self.allowed_origins


def _optional_int(value: object, name: str, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidSetting(name, f"{name} must be null or an integer from 0 to {maximum}")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSetting(name, f"{name} must be true or false")
    return value


def _string_list(value: object, name: str, max_items: int) -> list[str]:
    if not isinstance(value, list | tuple) or len(value) > max_items:
        raise InvalidSetting(name, f"{name} must be a list of at most {max_items} strings")
    if not all(isinstance(v, str) for v in value):
        raise InvalidSetting(name, f"{name} must be a list of strings")
    return list(value)


def page_patterns(value: object) -> tuple[str, ...]:
    """Checked glob patterns (`*` matches any characters, `/` included; `?` one character)."""
    patterns = _string_list(value, "page_patterns", MAX_PATTERNS)
    for pattern in patterns:
        if not pattern or len(pattern) > MAX_PATTERN_CHARS or not pattern.isprintable():
            raise InvalidSetting(
                "page_patterns",
                f"each page pattern must be 1 to {MAX_PATTERN_CHARS} printable characters",
            )
    return tuple(dict.fromkeys(patterns))


def origins(value: object) -> tuple[str, ...]:
    """Checked origins in the form browsers send: `scheme://host[:port]`, lower case."""
    return tuple(dict.fromkeys(origin(v) for v in _string_list(value, "allowed_origins", 100)))


def origin(value: str) -> str:
    """One origin, normalised like a browser's Origin header (default port dropped)."""
    bad = InvalidSetting(
        "allowed_origins",
        f"{value[:80]!r} is not an origin like https://example.com (scheme, host, optional port)",
    )
    if not value or len(value) > MAX_ORIGIN_CHARS or not value.isascii():
        raise bad
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise bad from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if (
        scheme not in DEFAULT_PORTS
        or not host
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise bad
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@lru_cache(maxsize=1024)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL)
