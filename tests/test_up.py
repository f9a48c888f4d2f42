"""`run_up` orchestration with stand-in subcommands in place of the real api and flusher."""

from __future__ import annotations

import io
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.cli import up
from tests.support.stack import pid_exists

# Stands in for `python -m services.cli ...`: records its argv and env, then behaves per FAKE_*.
FAKE_CLI = """
import json, os, signal, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_RECORD"], "a") as fh:
    keys = [k for k in os.environ if k.startswith("VIEWCOUNTER_")]
    fh.write(json.dumps({"args": args, "pid": os.getpid(),
                         "env": {k: os.environ[k] for k in keys}}) + "\\n")
if args[0] == "migrate":
    sys.exit(int(os.environ.get("FAKE_MIGRATE_EXIT", "0")))
if args[0] == "sites":
    sys.exit(0)
if args[0] == "api":
    if os.environ.get("FAKE_API_IGNORES_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "FAKE_API_EXIT" in os.environ:
        time.sleep(0.3)
        sys.exit(int(os.environ["FAKE_API_EXIT"]))
if args[0] == "flusher" and os.environ.get("FAKE_FLUSHER_STOPS_PARENT"):
    time.sleep(0.3)
    os.kill(os.getppid(), signal.SIGTERM)
while True:
    time.sleep(1)
"""


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_RECORD", str(path))
    monkeypatch.setattr(up, "_cli_command", lambda *args: [sys.executable, "-c", FAKE_CLI, *args])
    for name in (up.REDIS_URL_ENV, up.DATABASE_URL_ENV, up.ADMIN_TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    return path


ORDER = ["migrate", "sites", "api", "flusher"]


def _calls(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def _refuses_connections(url: str) -> bool:
    host_port = url.split("@")[-1].split("//")[-1].split("/")[0]
    host, port = host_port.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_child_crash_stops_the_stack_including_local_databases(
    record: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_API_EXIT", "3")

    code = up.run_up(host="127.0.0.1", port=8123, data_dir=tmp_path / "data", demo_site="blog")

    assert code == 3
    # api and flusher start concurrently, so they may record in either order.
    calls = sorted(_calls(record), key=lambda c: ORDER.index(c["args"][0]))
    assert [c["args"] for c in calls] == [
        ["migrate"],
        ["sites", "add", "blog"],
        ["api", "--host", "127.0.0.1", "--port", "8123"],
        ["flusher"],
    ]
    env = calls[0]["env"]
    assert env[up.REDIS_URL_ENV].startswith("redis://127.0.0.1:")
    assert env[up.DATABASE_URL_ENV].startswith("postgresql://postgres@127.0.0.1:")
    assert env[up.DATABASE_URL_ENV].endswith("/viewcounter")
    assert len(env[up.ADMIN_TOKEN_ENV]) >= 32
    assert all(c["env"] == env for c in calls)
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
    assert _refuses_connections(env[up.REDIS_URL_ENV])
    assert _refuses_connections(env[up.DATABASE_URL_ENV])
    flusher_pid = calls[3]["pid"]
    assert not pid_exists(flusher_pid)


def test_sigterm_stops_children_and_kills_those_past_the_grace_period(
    record: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(up.REDIS_URL_ENV, "redis://127.0.0.1:1/0")
    monkeypatch.setenv(up.DATABASE_URL_ENV, "postgresql://u@127.0.0.1:1/viewcounter")
    monkeypatch.setenv(up.ADMIN_TOKEN_ENV, "a-token-that-is-long-enough")
    monkeypatch.setenv("FAKE_FLUSHER_STOPS_PARENT", "1")
    monkeypatch.setenv("FAKE_API_IGNORES_SIGTERM", "1")
    monkeypatch.setattr(up, "CHILD_GRACE_S", 0.5)

    code = up.run_up(host="127.0.0.1", port=8124, data_dir=tmp_path / "data")

    assert code == 0
    calls = sorted(_calls(record), key=lambda c: ORDER.index(c["args"][0]))
    assert [c["args"][0] for c in calls] == ["migrate", "sites", "api", "flusher"]
    assert calls[0]["env"] == {
        up.REDIS_URL_ENV: "redis://127.0.0.1:1/0",
        up.DATABASE_URL_ENV: "postgresql://u@127.0.0.1:1/viewcounter",
        up.ADMIN_TOKEN_ENV: "a-token-that-is-long-enough",
    }
    for call in calls[2:]:
        assert not pid_exists(call["pid"])
    assert not (tmp_path / "data" / "redis").exists()


def test_failed_migration_returns_non_zero_before_starting_services(
    record: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(up.REDIS_URL_ENV, "redis://127.0.0.1:1/0")
    monkeypatch.setenv(up.DATABASE_URL_ENV, "postgresql://u@127.0.0.1:1/viewcounter")
    monkeypatch.setenv("FAKE_MIGRATE_EXIT", "2")

    code = up.run_up(host="127.0.0.1", port=8125, data_dir=tmp_path / "data")

    assert code == 1
    assert [c["args"] for c in _calls(record)] == [["migrate"]]


def test_up_says_what_it_does_while_postgres_is_initialised(
    record: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_API_EXIT", "3")
    data = tmp_path / "data"

    up.run_up(host="127.0.0.1", port=8126, data_dir=data)
    first_out = capfd.readouterr()
    first = first_out.out.splitlines()
    up.run_up(host="127.0.0.1", port=8126, data_dir=data)
    again = capfd.readouterr().out.splitlines()

    # Not a terminal: one plain line before each slow step, then what it started.
    steps = [
        line for line in first if line.startswith(("viewcounter up: start", "viewcounter up: init"))
    ]
    assert steps[0] == f"viewcounter up: starting Redis in {data / 'redis'}"
    assert steps[1].startswith("viewcounter up: started Redis on redis://127.0.0.1:")
    assert steps[2] == (
        f"viewcounter up: initialising Postgres in {data / 'postgres'} "
        "(first start only: may take a minute)"
    )
    started_postgres = "viewcounter up: started Postgres on postgresql://"
    assert steps[3:4] and steps[3].startswith(started_postgres), first_out
    assert f"viewcounter up: starting Postgres in {data / 'postgres'}" in again


def test_up_on_a_terminal_shows_a_spinner_instead_of_plain_lines(
    record: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_API_EXIT", "3")
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=200, color_system=None)

    up.run_up(host="127.0.0.1", port=8127, data_dir=tmp_path / "data", console=console)

    assert "initialising Postgres in" in terminal.getvalue()
    assert "starting Redis in" in terminal.getvalue()
    out = capfd.readouterr().out
    assert "initialising" not in out and "starting Redis" not in out
    assert "viewcounter up: started Postgres on postgresql://" in out
