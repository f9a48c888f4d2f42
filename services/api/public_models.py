"""The request and answer shapes of the public counting routes, as pydantic models: only
to describe them in the OpenAPI document (public_schema.py); the routes parse their own input.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.counter import ids

SITE_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
Reason = Literal["duplicate", "bot", "rate_limited", "page_limit", "unknown_page"]


class HitIn(BaseModel):
    """One page view. Also accepted as text/plain (what sendBeacon sends)."""

    page: str = Field(
        min_length=1, description=f"page id: up to {ids.PAGE_ID_MAX_BYTES} UTF-8 bytes"
    )
    visitor: str | None = Field(
        None, max_length=128, description="the site's own visitor id, if it has one"
    )
    url: str | None = Field(None, max_length=2048)
    referrer: str | None = Field(None, max_length=2048)
    title: str | None = Field(
        None,
        max_length=ids.TITLE_MAX_CHARS,
        description="the page's title, learned only where the site sets learn_titles; no "
        "control or format characters",
    )
    stats: bool | None = Field(
        None, description="true: the answer also carries the statistics block (`stats`)"
    )


class StatsBlock(BaseModel):
    """The statistics block: views in the site's local calendar, visitors online, the total."""

    timezone: str = Field(description="the site's time zone (IANA name)")
    day: str = Field(description="today's local date, YYYY-MM-DD")
    online: int = Field(description="distinct visitors seen in the online window (an estimate)")
    today: int
    yesterday: int
    this_week: int = Field(description="Monday to today")
    this_month: int = Field(description="the 1st to today")
    total: int = Field(description="the footer total: `site_views` of counts")
    partial: Literal[True] | None = Field(
        None,
        description="only when true: a Redis Cluster node holding part of the site did not "
        "answer; its parts are as last known (a lower bound, never below an earlier answer)",
    )


class StatsOut(StatsBlock):
    """The statistics block of a site, live."""

    site: str


class HitOut(BaseModel):
    """Whether the view counted, and the live totals."""

    site: str
    page: str
    counted: bool
    reason: Reason | None = Field(None, description="only when not counted")
    page_views: int
    site_views: int
    stats: StatsBlock | None = Field(None, description="only when the hit asked for it")


class CountsOut(BaseModel):
    """Live totals, and distinct visitors of the site's current local day."""

    site: str
    site_views: int
    pages: dict[str, int]
    day: str = Field(description="the site's local date the visitor numbers are for")
    site_visitors: int
    page_visitors: dict[str, int]
    partial: Literal[True] | None = Field(
        None,
        description="only when true: a Redis Cluster node holding part of the site did not "
        "answer; its parts are as last known or as flushed to Postgres (a lower bound, never "
        "below an earlier answer of the same api process)",
    )


class TopPage(BaseModel):
    """One page of the most-read list."""

    page: str
    title: str | None = Field(description="null when unknown")
    views: int


class TopOut(BaseModel):
    """The most viewed pages of the period, live (at most 60 s stale), ties by page id."""

    site: str
    period: Literal["today", "week", "month"]
    from_: str = Field(alias="from", description="the period's first local day, YYYY-MM-DD")
    to: str = Field(description="the site's local date today, YYYY-MM-DD")
    pages: list[TopPage]


class BatchView(BaseModel):
    """One page view in a batch, with who made it as the collector saw them."""

    model_config = ConfigDict(extra="forbid")

    page: str = Field(min_length=1)
    visitor: str | None = Field(None, max_length=128)
    ip: str | None = Field(None, max_length=45, description="IPv4 or IPv6 address")
    user_agent: str | None = Field(None, max_length=512)


class BatchIn(BaseModel):
    """Body of POST /v1/sites/{site}/hits/batch."""

    hits: list[BatchView] = Field(min_length=1, max_length=10_000)


class BatchOut(BaseModel):
    """How many views had each outcome; `replayed`: the Idempotency-Key was seen before."""

    site: str
    hits: int
    outcomes: dict[str, int]
    replayed: bool


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


MODELS: tuple[type[BaseModel], ...] = (
    HitIn,
    HitOut,
    CountsOut,
    TopOut,
    StatsOut,
    BatchIn,
    BatchOut,
    ErrorOut,
)
