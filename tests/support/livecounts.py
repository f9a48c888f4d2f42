"""Polling the live counts through the api while a scenario runs, to check they never go
backwards (the upgrade and restore scenarios)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

POLL_S = 0.05


class Watcher:
    """Polls the live counts of `pages` through whichever api `client` points at now, one
    request after the other, and keeps every answer in order: (site_views, page views…)."""

    def __init__(self, client: httpx.AsyncClient, site: str, pages: Sequence[str]) -> None:
        self.client = client
        self.site = site
        self.pages = list(pages)
        self.seen: list[tuple[int, ...]] = []
        self.failed = 0
        self.stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        query = "&".join(f"page={p}" for p in self.pages)
        while not self.stop.is_set():
            try:
                response = await self.client.get(f"/v1/sites/{self.site}/counts?{query}")
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 200:
                body = response.json()
                self.seen.append((body["site_views"], *(body["pages"][p] for p in self.pages)))
            else:
                self.failed += 1  # an api being replaced, say
            await asyncio.sleep(POLL_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-count-watcher")

    async def finish(self) -> None:
        """Stop polling (the poll in hand completes)."""
        self.stop.set()
        if self._task is not None:
            await self._task

    def backwards(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Consecutive answers where any count went down."""
        pairs = zip(self.seen, self.seen[1:], strict=False)
        return [(a, b) for a, b in pairs if any(y < x for x, y in zip(a, b, strict=True))]
