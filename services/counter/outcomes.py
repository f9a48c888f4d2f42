"""What a hit asks for and what happens to it: the outcome, the page rule, the value types.

Pure values: nothing here talks to Redis, so the api, the use cases and the tests share them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final


class Outcome(enum.StrEnum):
    """What happened to a hit; the values are the API's `reason` strings (and metric labels).

    A StrEnum, so the answer's JSON and the metrics take a member as the string it is.
    """

    COUNTED = "counted"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    PAGE_LIMIT = "page_limit"
    UNKNOWN_PAGE = "unknown_page"
    BOT = "bot"


# hits.lua answers each hit with a code 1-5 (see its header): code n is _BY_CODE[n - 1].
_BY_CODE: Final[tuple[Outcome, ...]] = (
    Outcome.COUNTED,
    Outcome.DUPLICATE,
    Outcome.RATE_LIMITED,
    Outcome.PAGE_LIMIT,
    Outcome.UNKNOWN_PAGE,
)


def decode(code: int) -> Outcome:
    """The outcome of hits.lua's code 1-5; ValueError for any other."""
    if not 1 <= code <= len(_BY_CODE):
        raise ValueError(f"hits.lua outcome code {code} is not 1-{len(_BY_CODE)}")
    return _BY_CODE[code - 1]


@dataclass(frozen=True, slots=True)
class HitResult:
    """What happened to a hit, and the live totals."""

    outcome: Outcome
    page_views: int
    site_views: int


def hit_results(answer: Sequence[Any]) -> list[HitResult] | None:
    """The results in a hits.lua answer (`loaded`, then outcome code, page views, site
    views per hit); None when the unit was not loaded (nothing was written)."""
    if answer[0] == 0:
        return None
    # Integer replies arrive as ints: no conversion on the hit path.
    return [
        HitResult(decode(answer[i]), answer[i + 1], answer[i + 2]) for i in range(1, len(answer), 3)
    ]


def hit_tally(answer: Sequence[Any]) -> dict[Outcome, int] | None:
    """How many hits of a hits.lua answer had each outcome: of its results, or of the record
    a call sent again found ({2, n_1, ..., n_5}); None when the unit was not loaded."""
    if answer[0] == 0:
        return None
    if answer[0] == 2:
        return {_BY_CODE[i]: int(n) for i, n in enumerate(answer[1:]) if n}
    tally: dict[Outcome, int] = {}
    for i in range(1, len(answer), 3):
        outcome = decode(answer[i])
        tally[outcome] = tally.get(outcome, 0) + 1
    return tally


@dataclass(frozen=True, slots=True)
class PageRule:
    """Which pages of a site a hit may count on: any page, at most n distinct pages, or
    only the pages registered for the site. Build it with any_page(), at_most(n),
    only_known()."""

    # hits.lua's encoding: 0 any page, n > 0 at most n pages, -1 only known pages.
    bound: int

    @staticmethod
    def any_page() -> PageRule:
        """Every page counts."""
        return ANY_PAGE

    @staticmethod
    def at_most(pages: int) -> PageRule:
        """Pages count until the site has `pages` distinct ones (0: any page)."""
        if pages < 0:
            raise ValueError(f"a page bound is at least 0, not {pages}")
        return ANY_PAGE if pages == 0 else PageRule(pages)

    @staticmethod
    def only_known() -> PageRule:
        """Only pages registered for the site count."""
        return ONLY_KNOWN

    def lua_arg(self, units: int) -> int:
        """The rule as hits.lua takes it for one of `units` units of the site: a bound of
        n pages becomes each unit's share, n / units rounded up (a unit cannot see the
        others' pages)."""
        bound = self.bound
        if units > 1 and bound > 0:
            return math.ceil(bound / units)
        return bound


ANY_PAGE: Final = PageRule(0)
ONLY_KNOWN: Final = PageRule(-1)


@dataclass(frozen=True, slots=True)
class HitRequest:
    """One page view to take: the page, its local day, and who it came from (as tokens)."""

    site: str
    page: str
    day: str
    seen_token: str  # visitors.seen_token (hex), "-" when the window is 0
    dedupe_window_s: int
    client_token: str
    time_s: int  # unix second the hit was taken, by the api's clock
    rate_limit: int
    page_rule: PageRule
    visitor_token: str
    title: str = ""  # a title to learn for the page (validated); "": none

    @property
    def minute(self) -> int:
        """The clock minute of the hit (unix time // 60): its rate counter, online sketch."""
        return self.time_s // 60


@dataclass(frozen=True, slots=True)
class Counts:
    """Live totals of a site and some of its pages."""

    site_views: int
    pages: dict[str, int]
    site_visitors: int = 0  # distinct visitors of the site on the day asked
    page_visitors: dict[str, int] | None = None  # distinct visitors of each page that day
    # Some parts are as last known or as flushed (a Cluster node did not answer): a lower
    # bound, never lower than this process answered before.
    partial: bool = False


@dataclass(frozen=True, slots=True)
class RedisPersistence:
    """How Redis' last writes to disk went (INFO persistence). A failed AOF write, or a
    failed RDB save (with Redis' default stop-writes-on-bgsave-error), makes Redis refuse
    every write (MISCONF) until one succeeds; a failed AOF rewrite does not, yet."""

    aof_write_ok: bool  # aof_last_write_status
    rdb_save_ok: bool  # rdb_last_bgsave_status
    aof_rewrite_ok: bool  # aof_last_bgrewrite_status

    @property
    def writes_accepted(self) -> bool:
        """False when Redis refuses writes because it cannot persist them."""
        return self.aof_write_ok and self.rdb_save_ok


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """Redis' memory use against its bound (`max_bytes` 0: no bound set)."""

    used_bytes: int
    max_bytes: int

    @property
    def ratio(self) -> float | None:
        """Used / bound, or None when Redis has no bound."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None
