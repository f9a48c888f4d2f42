"""Server-Sent Events: the live totals of a site and one page, pushed when they change.

Every open stream of one (site, page) shares one poller in this process, which reads the live
totals once a second while anyone listens and wakes its listeners when they changed; each
connection sends at most one event a second. Open streams per process are bounded, and a
client that goes away frees its slot at once: the response listens for the disconnect instead
of noticing it at the next write.

A stream ends after about STREAM_MAX_S and EventSource reconnects by itself (`retry:`). That
spreads long-lived connections over api replicas, and bounds how long a stopping server waits:
uvicorn lets open responses finish before it shuts down, and an endless one never would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services import metrics
from services.api.errors import ApiError
from services.counter import ids
from services.counter.errors import CounterUnavailable
from services.counting.live import LiveCounts, UnknownSite
from services.db import errors as db_errors

log = logging.getLogger("viewcounter.api")

POLL_INTERVAL_S = 1.0
MIN_EVENT_INTERVAL_S = 1.0
HEARTBEAT_S = 15.0
STREAM_MAX_S = 20.0
RECONNECT_MS = 1000
REFUSED_RETRY_AFTER_S = 30

OPEN_STREAMS = metrics.OPEN_STREAMS
POLLERS = metrics.POLLERS
REFUSED_STREAMS = metrics.REFUSED_STREAMS

Totals = tuple[int, int]  # (site views, page views)
FeedKey = tuple[str, str | None]


async def read_totals(live: LiveCounts, site: str, page: str | None) -> Totals:
    """Live (site views, page views) of `site` and `page` (0 without a page), not counted."""
    counts = await live.counts(site, [page] if page is not None else [])
    return counts.site_views, counts.pages.get(page, 0) if page is not None else 0


@dataclass(eq=False)
class _Feed:
    """The latest totals of one (site, page), and who waits for them to change."""

    totals: Totals
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: int = 0
    task: asyncio.Task[None] | None = None

    def publish(self, totals: Totals) -> None:
        if totals == self.totals:
            return
        self.totals = totals
        self.version += 1
        # Wake everyone waiting on the old event; later waiters wait on the new one.
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class _EventStream(StreamingResponse):
    """A streaming response that stops as soon as the client disconnects, then `release`s.

    Starlette stops on disconnect only for servers speaking ASGI < 2.4; past that it notices
    at the next write, which for a quiet stream is a heartbeat away.
    """

    def __init__(
        self, events: AsyncIterator[bytes], release: Callable[[], None], headers: dict[str, str]
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client is gone
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self._release()
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()


def _event(site: str, page: str | None, totals: Totals) -> bytes:
    body = {"site": site, "page": page, "site_views": totals[0], "page_views": totals[1]}
    return b"event: counts\ndata: " + orjson.dumps(body) + b"\n\n"


class StreamHub:
    """Open streams of one app: the bound on their number and one poller per (site, page)."""

    def __init__(self, max_streams: int, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.max_streams = max_streams
        self.poll_interval_s = poll_interval_s
        self.open_streams = 0
        self._feeds: dict[FeedKey, _Feed] = {}

    @property
    def pollers(self) -> int:
        """(site, page) pairs polled now."""
        return len(self._feeds)

    async def endpoint(self, request: Request) -> Response:
        """GET /v1/sites/{site}/stream?page=: an event now, then one per change, <= 1/s."""
        site = ids.site_id(request.path_params["site"])
        raw_page = request.query_params.get("page")
        page = ids.page_id(raw_page) if raw_page is not None else None
        live: LiveCounts = request.state.live
        if self.open_streams >= self.max_streams:
            REFUSED_STREAMS.inc()
            raise ApiError(
                503,
                "too_many_streams",
                "this server has its maximum of open streams; try again later",
                headers={"Retry-After": str(REFUSED_RETRY_AFTER_S)},
            )
        # Taken before the first read so concurrent connects cannot pass the bound.
        self._take_slot()
        try:
            # Unknown site, bad page or Redis down: a plain error answer, not a stream.
            totals = await read_totals(live, site, page)
        except BaseException:
            self._give_slot()
            raise
        key = (site, page)
        feed = self._subscribe(key, live, totals)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._unsubscribe(key, feed)
                self._give_slot()

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return _EventStream(self._events(site, page, feed, totals), release, headers)

    def _take_slot(self) -> None:
        self.open_streams += 1
        OPEN_STREAMS.inc()

    def _give_slot(self) -> None:
        self.open_streams -= 1
        OPEN_STREAMS.dec()

    async def _events(
        self, site: str, page: str | None, feed: _Feed, first: Totals
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        # Streams opened together should not all reconnect together.
        deadline = loop.time() + STREAM_MAX_S * random.uniform(0.75, 1.0)
        yield f"retry: {RECONNECT_MS}\n\n".encode() + _event(site, page, first)
        sent, seen = first, feed.version
        last_write = last_event = loop.time()
        while True:
            now = loop.time()
            if now >= deadline:
                return
            if feed.version != seen:
                wait = last_event + MIN_EVENT_INTERVAL_S - now
                if wait > 0:
                    await asyncio.sleep(min(wait, deadline - now))
                    continue
                seen = feed.version
                # Live totals never go backwards; an older read than the one sent is skipped.
                if feed.totals != sent and feed.totals[0] >= sent[0]:
                    sent = feed.totals
                    yield _event(site, page, sent)
                    last_write = last_event = loop.time()
                continue
            timeout = min(last_write + HEARTBEAT_S - now, deadline - now)
            try:
                await asyncio.wait_for(feed.changed.wait(), timeout=max(timeout, 0))
            except TimeoutError:
                if loop.time() - last_write >= HEARTBEAT_S:
                    yield b": ping\n\n"  # keeps proxies from closing a quiet connection
                    last_write = loop.time()

    def _subscribe(self, key: FeedKey, live: LiveCounts, totals: Totals) -> _Feed:
        feed = self._feeds.get(key)
        if feed is None:
            feed = _Feed(totals)
            self._feeds[key] = feed
            feed.task = asyncio.create_task(self._poll(key, feed, live))
            feed.task.add_done_callback(_log_failure)
            POLLERS.inc()
        feed.listeners += 1
        return feed

    def _unsubscribe(self, key: FeedKey, feed: _Feed) -> None:
        feed.listeners -= 1
        if feed.listeners == 0 and self._feeds.get(key) is feed:
            del self._feeds[key]
            POLLERS.dec()
            if feed.task is not None:
                feed.task.cancel()

    async def _poll(self, key: FeedKey, feed: _Feed, live: LiveCounts) -> None:
        site, page = key
        failing = False
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                totals = await read_totals(live, site, page)
            except (
                CounterUnavailable,
                db_errors.DatabaseUnavailable,
                UnknownSite,
            ) as exc:
                # Listeners keep the last totals; the next tick tries again.
                if not failing:
                    log.warning("stream poll failed", extra={"site": site, "error": str(exc)})
                failing = True
                continue
            failing = False
            feed.publish(totals)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("stream poller failed", exc_info=task.exception())
