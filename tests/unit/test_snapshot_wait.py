"""What a flush snapshot's pipeline waits for (scripts.Wait): the commands sent after it, and
how their answers are read, also on a Redis without WAITAOF (before 7.2)."""

from __future__ import annotations

from redis.exceptions import ResponseError

from services.counter.scripts import Wait

NO_WAITAOF = ResponseError("ERR unknown command 'WAITAOF'")


def test_without_replicas_only_waitaof_for_the_local_disk() -> None:
    wait = Wait(2000)
    assert wait.commands() == [("WAITAOF", 1, 0, 2000)]
    assert wait.confirmed([[1, 0]]) is True
    assert wait.confirmed([[0, 0]]) is False
    assert wait.confirmed([NO_WAITAOF]) is None  # the server cannot say


def test_with_replicas_waitaof_then_wait_on_the_same_pipeline() -> None:
    wait = Wait(2000, replicas=1)
    assert wait.commands() == [("WAITAOF", 1, 1, 2000), ("WAIT", 1, 2000)]
    assert wait.confirmed([[1, 1], 1]) is True
    assert wait.confirmed([[1, 0], 1]) is False  # in the replica's memory, not its AOF
    assert wait.confirmed([[1, 1], 0]) is False
    assert wait.confirmed([[0, 1], 1]) is False  # not on the local disk in time


def test_a_redis_without_waitaof_relies_on_wait_for_the_replicas() -> None:
    wait = Wait(2000, replicas=2)
    assert wait.confirmed([NO_WAITAOF, 2]) is None  # replicas have it; local fsync unknown
    assert wait.confirmed([NO_WAITAOF, 1]) is False
    remote_only = Wait(2000, local=False, replicas=1)
    assert remote_only.commands() == [("WAITAOF", 0, 1, 2000), ("WAIT", 1, 2000)]
    assert remote_only.confirmed([NO_WAITAOF, 1]) is True
    assert remote_only.confirmed([[0, 1], 1]) is True
