"""Where the local Redis and Postgres binaries come from, and free ports (starting the servers:
tests/test_localservers.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from services.cli import localpostgres, localredis, localservers

pytestmark = pytest.mark.unit


def test_free_port_can_be_bound() -> None:
    port = localservers.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_binary_overrides_come_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(localservers.REDIS_SERVER_ENV, "/opt/custom/valkey-server")
    monkeypatch.setenv(localservers.PG_BIN_DIR_ENV, str(tmp_path))
    assert localredis.redis_server_binary() == "/opt/custom/valkey-server"
    assert localpostgres.postgres_bin_dir() == tmp_path


def test_default_binaries_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(localservers.REDIS_SERVER_ENV, raising=False)
    monkeypatch.delenv(localservers.PG_BIN_DIR_ENV, raising=False)
    assert os.access(localredis.redis_server_binary(), os.X_OK)
    bin_dir = localpostgres.postgres_bin_dir()
    for name in ("postgres", "initdb", "pg_isready", "psql"):
        assert os.access(bin_dir / name, os.X_OK), name


def test_a_server_listens_where_told_and_starts_through_its_prefix(tmp_path: Path) -> None:
    prefix = ["ip", "netns", "exec", "ns1"]
    redis = localredis.RedisProcess(tmp_path, 7000, listen="10.0.0.1", command_prefix=prefix)
    command = redis._launch_command()
    assert command[:4] == prefix
    assert command[command.index("--bind") + 1] == "10.0.0.1"
    # Off loopback, protected mode would refuse every client; on it, it stays on.
    assert command[command.index("--protected-mode") + 1] == "no"
    plain = localredis.RedisProcess(tmp_path, 7000)._launch_command()
    assert plain[0] != "ip"
    assert plain[plain.index("--protected-mode") + 1] == "yes"


def test_a_prefixed_postgres_drops_root_after_its_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(localservers.PG_BIN_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(localpostgres.os, "geteuid", lambda: 0)
    user = type("User", (), {"pw_uid": 990, "pw_gid": 991})()
    monkeypatch.setattr(localpostgres, "_ensure_system_user", lambda name: user)
    prefix = ["ip", "netns", "exec", "ns1"]
    server = localpostgres.PostgresProcess(
        tmp_path / "data", 7001, listen="10.0.0.2", command_prefix=prefix
    )
    command = server._launch_command()
    assert command[: len(prefix) + 1] == [*prefix, "setpriv"]
    assert "--reuid=990" in command and "--regid=991" in command
    assert "listen_addresses=10.0.0.2" in command
    assert "user" not in server._popen_kwargs()  # Popen stays root: `ip netns exec` needs it
    unprefixed = localpostgres.PostgresProcess(tmp_path / "data", 7001)
    assert unprefixed._launch_command()[0] == str(tmp_path / "postgres")
    assert unprefixed._popen_kwargs()["user"] == 990
