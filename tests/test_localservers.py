"""Real Redis and Postgres processes: start, crash (SIGKILL), restart, and data survives."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.cli import localpostgres, localredis
from tests.support.stack import pid_exists


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[localredis.RedisProcess]:
    with localredis.RedisProcess(tmp_path / "redis") as server:
        yield server


def _client(server: localredis.RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_redis_keeps_acknowledged_writes_across_sigkill(tmp_path: Path) -> None:
    # appendfsync always: Redis writes and fsyncs the AOF before it replies. (Under everysec
    # it may postpone the write while a background fsync is slow, and reply first: a kill
    # then loses the last writes, which this test once saw under load.)
    redis_server = localredis.RedisProcess(tmp_path / "redis", appendfsync="always")
    redis_server.start()
    try:
        _kill_and_restart_keeps(redis_server)
    finally:
        redis_server.stop()


def _kill_and_restart_keeps(redis_server: localredis.RedisProcess) -> None:
    client = _client(redis_server)
    client.incrby("views", 41)
    client.incr("views")
    client.close()
    old_pid = redis_server.pid

    redis_server.kill()
    assert redis_server.pid is None
    assert old_pid is not None and not pid_exists(old_pid)
    redis_server.start()

    client = _client(redis_server)
    assert client.get("views") == b"42"
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    client.close()


def test_redis_graceful_restart_keeps_data_on_the_same_port(
    redis_server: localredis.RedisProcess,
) -> None:
    port, url = redis_server.port, redis_server.url
    client = _client(redis_server)
    client.set("page", "hello")
    client.close()

    redis_server.restart()

    assert (redis_server.port, redis_server.url) == (port, url)
    client = _client(redis_server)
    assert client.get("page") == b"hello"
    client.close()


def test_redis_start_failure_reports_log_tail(tmp_path: Path) -> None:
    server = localredis.RedisProcess(tmp_path / "redis", appendfsync="sometimes")
    with pytest.raises(RuntimeError, match="appendfsync"):
        server.start()
    assert server.pid is None


def test_exit_stops_the_server(tmp_path: Path) -> None:
    with localredis.RedisProcess(tmp_path / "redis") as server:
        pid = server.pid
        assert pid is not None
    assert server.pid is None
    assert not pid_exists(pid)


def test_postgres_keeps_committed_rows_across_sigkill(tmp_path: Path) -> None:
    with localpostgres.PostgresProcess(tmp_path / "pg") as server:
        assert server.url("viewcounter") == (
            f"postgresql://postgres@127.0.0.1:{server.port}/viewcounter"
        )
        assert server.ensure_database("viewcounter") is True
        assert server.ensure_database("viewcounter") is False
        server.psql(
            "CREATE TABLE totals (page text PRIMARY KEY, n bigint NOT NULL);"
            "INSERT INTO totals VALUES ('a', 1), ('b', 2);",
            "viewcounter",
        )
        postmaster = server.pid

        server.kill()
        assert server.pid is None
        assert postmaster is not None and not pid_exists(postmaster)
        server.start()  # crash recovery from the WAL, same port, stale postmaster.pid

        assert server.psql("SELECT sum(n) FROM totals", "viewcounter").strip() == "3"
        server.restart()
        assert server.psql("SELECT count(*) FROM totals", "viewcounter").strip() == "2"
    assert server.pid is None


def test_postgres_without_fsync_applies_speed_settings(tmp_path: Path) -> None:
    with localpostgres.PostgresProcess(tmp_path / "pg", fsync=False) as server:
        settings = server.psql(
            "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings"
            " WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')"
        )
    assert settings.strip() == "fsync=off,full_page_writes=off,synchronous_commit=off"


def test_a_cluster_node_whose_bus_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    node = localredis.RedisProcess(tmp_path / "node", cluster=True)
    taken = node.cluster_port
    with socket.socket() as blocker:  # as an outgoing connection may take a "free" port
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        with node:
            assert node.cluster_port != taken
            assert _client(node).ping()
    # A restart keeps the port the other nodes know.
    moved = node.cluster_port
    with node:
        assert node.cluster_port == moved
