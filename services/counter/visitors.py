"""Who a hit comes from, without keeping who it is: salted hashes that change every day.

A visitor is the `visitor` the site sends, else the client IP and User-Agent. Either way only
a keyed hash (BLAKE2b, a MAC in one call) with a random salt of the UTC day reaches Redis.
The salt lives in Redis for two days and never in Postgres, so once it expires the hashes
cannot be linked back to an IP.
"""

from __future__ import annotations

import hashlib

TOKEN_BYTES = 12  # 96 bits: collisions are not a practical concern per site and day
USER_AGENT_MAX_CHARS = 512


def _token(salt: bytes, *parts: str) -> str:
    message = "\x00".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(message, key=salt, digest_size=TOKEN_BYTES).hexdigest()


def visitor_token(salt: bytes, site: str, visitor: str | None, ip: str, ua: str) -> str:
    """Token of one visitor of one site for the day: what unique-visitor counts count."""
    who = f"v:{visitor}" if visitor else f"c:{ip}\x00{ua[:USER_AGENT_MAX_CHARS]}"
    return _token(salt, site, who)


def seen_token(salt: bytes, visitor: str, page: str) -> str:
    """Token of one visitor (a `visitor_token`) viewing one page, for the dedupe window."""
    return _token(salt, visitor, page)


def client_token(salt: bytes, site: str, ip: str) -> str:
    """Token of one client address on one site, for the rate limit."""
    return _token(salt, site, ip)
