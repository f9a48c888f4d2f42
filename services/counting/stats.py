"""The statistics block's periods: which local days make today, yesterday, this week (from
Monday) and this month (from the 1st), and the block built from the views of those days.

Pure values (no I/O): LiveCounts.stats reads the days from Redis and hands them here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, timedelta

from services.counter.stats import LiveStats


@dataclass(frozen=True, slots=True)
class Periods:
    """The local days of each period, as of local day `today`."""

    today: date

    @property
    def yesterday(self) -> date:
        """The local day before today."""
        return self.today - timedelta(days=1)

    @property
    def week(self) -> list[str]:
        """Monday of this week .. today (weeks start on Monday)."""
        return _days(self.today - timedelta(days=self.today.weekday()), self.today)

    @property
    def month(self) -> list[str]:
        """The 1st of this month .. today."""
        return _days(self.today.replace(day=1), self.today)

    @property
    def days(self) -> list[str]:
        """Every day any period needs, oldest first (at most 31)."""
        start = min(self.yesterday, self.today.replace(day=1))
        return _days(min(start, self.today - timedelta(days=self.today.weekday())), self.today)


def _days(first: date, last: date) -> list[str]:
    return list(_day_range(first, last))


@functools.lru_cache(maxsize=256)
def _day_range(first: date, last: date) -> tuple[str, ...]:
    # Every stats read asks for the same few ranges all day: work them out once.
    return tuple((first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1))


@dataclass(frozen=True, slots=True)
class Stats:
    """The statistics block (GET /v1/sites/{site}/stats without "site")."""

    timezone: str
    day: str
    online: int
    today: int
    yesterday: int
    this_week: int
    this_month: int
    total: int
    partial: bool = False  # a Cluster node did not answer: see LiveStats

    @staticmethod
    def of(timezone: str, periods: Periods, live: LiveStats) -> Stats:
        """The block from the views of `periods.days` and the live total and online count."""
        views = live.days
        return Stats(
            timezone=timezone,
            day=periods.today.isoformat(),
            online=live.online,
            today=views.get(periods.today.isoformat(), 0),
            yesterday=views.get(periods.yesterday.isoformat(), 0),
            this_week=sum(views.get(day, 0) for day in periods.week),
            this_month=sum(views.get(day, 0) for day in periods.month),
            total=live.site_views,
            partial=live.partial,
        )

    def as_dict(self) -> dict[str, object]:
        """The JSON fields, in the documented order (`partial` only when true)."""
        fields: dict[str, object] = {
            "timezone": self.timezone,
            "day": self.day,
            "online": self.online,
            "today": self.today,
            "yesterday": self.yesterday,
            "this_week": self.this_week,
            "this_month": self.this_month,
            "total": self.total,
        }
        if self.partial:
            fields["partial"] = True
        return fields

