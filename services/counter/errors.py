"""The Redis side's own errors; their docstrings are their default messages."""

from __future__ import annotations


class CounterUnavailable(Exception):
    """Redis is unreachable, loading, full or did not answer in time."""


class PersistenceFailed(CounterUnavailable):
    """Redis refuses writes (MISCONF): it cannot write its append-only file or its last RDB
    save failed (a full or read-only disk); nothing was applied."""


class UnsafeRedis(Exception):
    """Redis is configured to evict keys, which would silently drop unflushed counts."""


class LayoutMismatch(UnsafeRedis):
    """Redis holds counts split over another number of units than VIEWCOUNTER_SHARDS says."""
