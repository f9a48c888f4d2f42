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
