"""Per-site API keys: making, listing and revoking them, and checking a secret on every
protected request without a Postgres round trip.

A secret is `vck_` and 43 characters of `secrets.token_urlsafe(32)` (256 random bits); only
its SHA-256 is stored. A random 256-bit secret cannot be found from its hash by trying
candidates, so a slow password hash would only slow every request down.

Each api process caches what it learned about a secret's hash (the key, or that there is
none) for KEY_CACHE_S. A revocation increments a generation number in Redis
(counter/keygen.py); a process reads it at most every GENERATION_CHECK_S while keys are used
and drops its whole cache when it changed. So every process refuses a revoked key within
GENERATION_CHECK_S (plus one Redis read) while Redis answers, and within KEY_CACHE_S (plus
one Postgres read) whatever happens: the documented bound is 5 s, under the issue's 10 s.

When a key was last used is kept in memory and written in the background every
LAST_USED_EVERY_S, one statement for all keys used meanwhile: at most once per 30 s per key
and process, and never more than about 60 s old.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from services.counter.errors import CounterUnavailable
from services.counter.keygen import KeyGeneration
from services.counting.live import UnknownSite
from services.counting.principals import SCOPES, Scope, SiteKey
from services.db import audit as db_audit
from services.db import errors as db_errors
from services.db import keys as db_keys

log = logging.getLogger("viewcounter.keys")

SECRET_PREFIX = "vck_"
SECRET_RE = re.compile(r"vck_[A-Za-z0-9_-]{43}")
KEY_ID_BYTES = 6  # 12 hex characters: a public name, not a secret
KEY_CACHE_S = 5.0
GENERATION_CHECK_S = 1.0
LAST_USED_EVERY_S = 30.0
CACHE_MAX_KEYS = 10_000
NAME_MAX_CHARS = 100
MAX_EXPIRES_IN_DAYS = 3650


class InvalidKeyRequest(ValueError):
    """A key's scope, name or lifetime is not acceptable; `field` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def new_secret() -> str:
    """A fresh secret: `vck_` and 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_sha256(secret: str) -> str:
    """What is stored of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scope(value: object) -> Scope:
    """`value` as a scope, or InvalidKeyRequest."""
    for scope in SCOPES:
        if value == scope:
            return scope
    raise InvalidKeyRequest("scope", f"scope must be one of {', '.join(SCOPES)}")


def check_name(value: object) -> str:
    """`value` as a key name ("" when None), or InvalidKeyRequest."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > NAME_MAX_CHARS or not value.isprintable():
        raise InvalidKeyRequest(
            "name", f"name must be printable text of at most {NAME_MAX_CHARS} characters"
        )
    return value


def check_expires_in_days(value: object) -> int | None:
    """`value` as a lifetime in whole days (None: never expires), or InvalidKeyRequest."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_EXPIRES_IN_DAYS
    ):
        raise InvalidKeyRequest(
            "expires_in_days",
            f"expires_in_days must be a whole number of 1 to {MAX_EXPIRES_IN_DAYS}",
        )
    return value


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just made, and its secret (shown once, never stored)."""

    key: db_keys.KeyRow
    secret: str

    def as_dict(self) -> dict[str, object]:
        """The answer of POST /v1/sites/{site}/keys."""
        shown = self.key.as_dict()
        return {
            "id": shown["id"],
            "secret": self.secret,
            "scope": shown["scope"],
            "name": shown["name"],
            "created_at": shown["created_at"],
            "expires_at": shown["expires_at"],
        }


@dataclass(frozen=True, slots=True)
class _Cached:
    key: db_keys.KeyRow | None  # None: no key has this hash
    until: float
    epoch: tuple[int, int]  # (Redis generation, local revocations) when it was read


class KeyRing:
    """The keys of every site, over Postgres (db.keys.Keys) and the Redis revocation
    generation; `clock` (seconds since the epoch) judges expiry and the cache's age."""

    def __init__(
        self,
        keys: db_keys.Keys,
        generation: KeyGeneration,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._generation = generation
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._redis_generation = 0
        self._local_revocations = 0
        self._checked_at = float("-inf")
        self._used: dict[str, float] = {}

    async def create(
        self,
        site: str,
        scope: Scope,
        name: str,
        expires_in_days: int | None,
        author: db_audit.Author,
    ) -> CreatedKey:
        """Make a key of `site` (logged as `author`'s); UnknownSite when there is no such site."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        secret = new_secret()
        new = db_keys.NewKey(
            id=secrets.token_hex(KEY_ID_BYTES),
            site=site,
            scope=scope,
            name=name,
            secret_sha256=secret_sha256(secret),
            created_at=now,
            expires_at=None if expires_in_days is None else now + timedelta(days=expires_in_days),
        )
        try:
            row = await self._keys.create(new, author)
        except db_errors.UnknownSiteRow:
            raise UnknownSite(site) from None
        return CreatedKey(row, secret)

    async def of_site(self, site: str) -> list[db_keys.KeyRow]:
        """The site's keys (revoked and expired ones too), oldest first."""
        return await self._keys.of_site(site)

    async def revoke(
        self, site: str, key_id: str, author: db_audit.Author
    ) -> db_keys.KeyRow | None:
        """Revoke the site's key `key_id` (logged as `author`'s; revoking it again changes
        nothing); None when the site has no such key. This process refuses it at once, the
        others within the documented bound."""
        at = datetime.fromtimestamp(self._clock(), UTC)
        key = await self._keys.revoke(site, key_id, at, author)
        if key is None:
            return None
        self._local_revocations += 1
        self._cache.clear()
        try:
            await self._generation.bump()
        except CounterUnavailable as exc:
            log.warning(
                "key revoked, but Redis did not take the news: other processes refuse it "
                "within %s s (their cache)",
                KEY_CACHE_S,
                extra={"key_id": key_id, "error": str(exc)},
            )
        return key

    async def resolve(
        self, secret: str, before_lookup: Callable[[], Awaitable[None]] | None = None
    ) -> SiteKey | None:
        """The key `secret` opens, if it is a key's secret, not revoked and not expired by this
        process's clock; else None. Answered from the cache when it can; `before_lookup` is
        awaited before asking Postgres (the caller counts it against the client's rate)."""
        if not SECRET_RE.fullmatch(secret):
            return None
        now = self._clock()
        await self._check_generation(now)
        digest = secret_sha256(secret)
        epoch = (self._redis_generation, self._local_revocations)
        cached = self._cache.get(digest)
        if cached is None or cached.until <= now or cached.epoch != epoch:
            if before_lookup is not None:
                await before_lookup()
            row = await self._keys.by_hash(digest)
            if len(self._cache) >= CACHE_MAX_KEYS:
                self._cache.clear()
            cached = _Cached(row, now + KEY_CACHE_S, epoch)
            self._cache[digest] = cached
        key = cached.key
        if key is None or key.revoked_at is not None:
            return None
        if key.expires_at is not None and key.expires_at.timestamp() <= now:
            return None
        self._used[key.id] = now
        return SiteKey(key.id, key.name, key.site, cast(Scope, key.scope))

    async def _check_generation(self, now: float) -> None:
        """Drop the cache when another process revoked a key (read at most every
        GENERATION_CHECK_S; while Redis fails, the cache's own age bounds what it keeps)."""
        if now - self._checked_at < GENERATION_CHECK_S and now >= self._checked_at:
            return
        self._checked_at = now  # before the read: one reader at a time
        try:
            generation = await self._generation.read()
        except CounterUnavailable:
            return
        if generation != self._redis_generation:
            self._redis_generation = generation
            self._cache.clear()

    async def write_last_used(self) -> int:
        """Write when keys were last used (since the previous write) to Postgres; how many
        keys. On failure the uses are kept for the next write."""
        used, self._used = self._used, {}
        if not used:
            return 0
        try:
            await self._keys.touch({k: datetime.fromtimestamp(t, UTC) for k, t in used.items()})
        except db_errors.DatabaseUnavailable:
            for key_id, at in used.items():
                self._used[key_id] = max(at, self._used.get(key_id, at))
            raise
        return len(used)

    async def keep_last_used(self, stop: asyncio.Event) -> None:
        """Write last uses every LAST_USED_EVERY_S until `stop` is set, then once more."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LAST_USED_EVERY_S)
            try:
                await self.write_last_used()
            except db_errors.DatabaseUnavailable as exc:
                log.warning("could not record when keys were last used: %s", exc)
            if stop.is_set():
                return
