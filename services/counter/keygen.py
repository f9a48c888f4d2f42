"""The API keys' revocation generation in Redis: a counter every revocation increments, which
each api process reads at most once a second to drop the keys it has cached. One key, no
TTL, on whichever node holds it on a Cluster."""

from __future__ import annotations

from services.counter import client, keys


class KeyGeneration:
    """Reads and bumps the revocation generation; Redis failures raise CounterUnavailable."""

    def __init__(self, redis: client.Client) -> None:
        self._redis = redis

    async def read(self) -> int:
        """The generation now (0 before the first revocation)."""
        with client.translated():
            value = await self._redis.get(keys.api_keys_generation_key())
        return int(value or 0)

    async def bump(self) -> int:
        """Say that a key was revoked; the new generation."""
        with client.translated():
            value = await self._redis.incr(keys.api_keys_generation_key())
        return int(value)
