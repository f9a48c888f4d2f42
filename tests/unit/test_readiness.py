"""Readiness: the api's status from its checks, and the flusher's failed-pass bound."""

from __future__ import annotations

import pytest

from services.api.ops import readiness_status
from services.flusher import worker

pytestmark = pytest.mark.unit

ALL_OK = {
    "redis": "ok",
    "redis_eviction": "ok",
    "redis_layout": "ok",
    "redis_memory": "ok",
    "postgres": "ok",
    "migrations": "ok",
}
DOWN = "ConnectionRefusedError: [Errno 111] Connection refused"


def test_the_api_is_ready_and_ok_when_every_check_passes() -> None:
    assert readiness_status(ALL_OK) == ("ok", 200)


@pytest.mark.parametrize(
    "failing",
    [
        {"redis": DOWN, "redis_eviction": "unknown", "redis_layout": "unknown"},
        {"redis_eviction": "Redis maxmemory-policy is allkeys-lru: …"},
        {"redis_layout": "Redis holds sites split over 4 units, VIEWCOUNTER_SHARDS says 1: …"},
    ],
)
def test_the_api_is_unready_when_hits_cannot_be_counted(failing: dict[str, str]) -> None:
    # Postgres down as well changes nothing: hits decide.
    assert readiness_status({**ALL_OK, **failing}) == ("unavailable", 503)
    assert readiness_status({**ALL_OK, **failing, "postgres": DOWN}) == ("unavailable", 503)


@pytest.mark.parametrize(
    "failing",
    [
        {"postgres": DOWN, "migrations": "unknown (Postgres unreachable)"},
        {"migrations": "migrations not applied: 0009 (run `viewcounter migrate`)"},
    ],
)
def test_postgres_trouble_leaves_the_api_ready_but_degraded(failing: dict[str, str]) -> None:
    assert readiness_status({**ALL_OK, **failing}) == ("degraded", 200)
    near_full = {**ALL_OK, **failing, "redis_memory": "warning: Redis uses 85% …"}
    assert readiness_status(near_full) == ("degraded", 200)


def test_redis_near_its_memory_bound_is_a_warning_and_ready() -> None:
    assert readiness_status({**ALL_OK, "redis_memory": "warning: Redis uses 85% …"}) == (
        "warning",
        200,
    )
    unbounded = "ok (no maxmemory set: Redis may grow until the machine runs out of memory)"
    assert readiness_status({**ALL_OK, "redis_memory": unbounded}) == ("ok", 200)
    assert readiness_status({**ALL_OK, "redis_memory": "unknown"}) == ("ok", 200)


def test_the_flusher_is_unready_from_the_third_failed_pass_in_a_row() -> None:
    assert worker.UNREADY_AFTER_FAILED_PASSES == 3
    flusher = object.__new__(worker.Flusher)  # no clients: only the pass counters matter
    flusher.consecutive_failures, flusher.last_error = 2, "DatabaseUnavailable: x"
    assert flusher.passes_check() == "ok"
    flusher.consecutive_failures = 3
    assert flusher.passes_check() == (
        "3 flush passes in a row failed, the last: DatabaseUnavailable: x"
    )
