"""Readiness: the api's status from its checks, and the flusher's failed-pass bound."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from services.api.errors import answer
from services.api.ops import persistence_check, readiness_status
from services.counter import client
from services.counter.errors import CounterUnavailable, PersistenceFailed
from services.counter.outcomes import RedisPersistence
from services.flusher import worker

pytestmark = pytest.mark.unit

ALL_OK = {
    "redis": "ok",
    "redis_eviction": "ok",
    "redis_layout": "ok",
    "redis_memory": "ok",
    "redis_persistence": "ok",
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
        {"redis_persistence": persistence_check(RedisPersistence(False, True, True))},
        {"redis_persistence": persistence_check(RedisPersistence(True, False, True))},
        {"redis_persistence": "unknown"},
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


def test_redis_that_cannot_persist_writes_is_named_in_readiness() -> None:
    assert persistence_check(RedisPersistence(True, True, True)) == "ok"
    assert persistence_check(RedisPersistence(False, True, True)).startswith(
        "failed: redis_persistence_failed: Redis cannot write its append-only file"
    )
    assert persistence_check(RedisPersistence(True, False, True)).startswith(
        "failed: redis_persistence_failed: Redis' last RDB save failed"
    )
    # A failed AOF rewrite alone: Redis still accepts writes; a warning, still ready.
    rewrite_failed = persistence_check(RedisPersistence(True, True, False))
    assert rewrite_failed.startswith("warning: ")
    assert readiness_status({**ALL_OK, "redis_persistence": rewrite_failed}) == ("warning", 200)


def test_misconf_is_a_503_naming_persistence_and_other_errors_are_not() -> None:
    misconf = redis_errors.ResponseError("MISCONF Errors writing to the AOF file: No space left")
    refused = client.unavailable(misconf)
    assert isinstance(refused, PersistenceFailed)
    assert "No space left" in str(refused)
    response = answer(refused)
    assert response.status_code == 503
    assert b'"code":"redis_persistence_failed"' in response.body
    assert response.headers["retry-after"]
    other = client.unavailable(redis_errors.ResponseError("ERR something else"))
    assert type(other) is CounterUnavailable
    assert b'"code":"redis_unavailable"' in answer(other).body


def test_the_flusher_is_unready_from_the_third_failed_pass_in_a_row() -> None:
    assert worker.UNREADY_AFTER_FAILED_PASSES == 3
    flusher = object.__new__(worker.Flusher)  # no clients: only the pass counters matter
    flusher.consecutive_failures, flusher.last_error = 2, "DatabaseUnavailable: x"
    assert flusher.passes_check() == "ok"
    flusher.consecutive_failures = 3
    assert flusher.passes_check() == (
        "3 flush passes in a row failed, the last: DatabaseUnavailable: x"
    )
