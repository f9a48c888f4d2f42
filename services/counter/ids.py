"""Validation and normalisation of site and page ids (the only ids a caller can send)."""

from __future__ import annotations

import re
import unicodedata

SITE_ID_MAX_CHARS = 64
PAGE_ID_MAX_BYTES = 512
TITLE_MAX_CHARS = 300
# Unicode categories a title may not hold: controls (Cc: NUL, newlines, escapes), format
# characters (Cf: bidi overrides, zero-width joiners that can disguise text) and lone
# surrogates (Cs: not text at all).
TITLE_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_SITE_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,63})")


class InvalidId(ValueError):
    """An id was refused; `field` names the input and the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def site_id(raw: object, field: str = "site") -> str:
    """A valid site slug: 1-64 of a-z, 0-9, '-', '_', starting with a letter or digit."""
    if not isinstance(raw, str):
        raise InvalidId(field, "must be a string")
    if raw == "":
        raise InvalidId(field, "must not be empty")
    if len(raw) > SITE_ID_MAX_CHARS:
        raise InvalidId(field, f"must be at most {SITE_ID_MAX_CHARS} characters")
    if not _SITE_RE.fullmatch(raw):
        raise InvalidId(
            field, "must be lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    return raw


def page_id(raw: object, field: str = "page") -> str:
    """A page id normalised to NFC and trimmed; printable, at most PAGE_ID_MAX_BYTES UTF-8 bytes.

    Two spellings of one slug (NFC and NFD Vietnamese, say) count as the same page.
    """
    if not isinstance(raw, str):
        raise InvalidId(field, "must be a string")
    text = unicodedata.normalize("NFC", raw).strip()
    if text == "":
        raise InvalidId(field, "must not be empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates: JSON lets "\ud800" through, UTF-8 cannot carry it.
        raise InvalidId(field, "must be valid UTF-8 text") from None
    if size > PAGE_ID_MAX_BYTES:
        raise InvalidId(field, f"must be at most {PAGE_ID_MAX_BYTES} bytes of UTF-8")
    if not text.isprintable():
        raise InvalidId(field, "must not contain control or other non-printable characters")
    return text


def title(raw: object, field: str = "title") -> str:
    """A page title normalised to NFC and trimmed: 1 to TITLE_MAX_CHARS characters, none of
    them a control or format character (Unicode Cc, Cf) or a lone surrogate.

    Unlike a page id a title may hold any other character (no-break spaces, emoji): it is
    shown, never used as a key.
    """
    if not isinstance(raw, str):
        raise InvalidId(field, "must be a string")
    text = unicodedata.normalize("NFC", raw).strip()
    if text == "":
        raise InvalidId(field, "must not be empty")
    if len(text) > TITLE_MAX_CHARS:
        raise InvalidId(field, f"must be at most {TITLE_MAX_CHARS} characters")
    for char in text:
        if unicodedata.category(char) in TITLE_REFUSED_CATEGORIES:
            raise InvalidId(
                field, f"must not contain control or format characters (U+{ord(char):04X})"
            )
    return text
