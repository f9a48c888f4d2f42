"""Throwaway or local Redis and Postgres servers run from binaries the Python install ships:
what they share (free ports, the process's life: start, readiness, stop, kill, restart).

Used by `viewcounter up`, the test suite and the benchmarks. Each server is a child process we
own by pid (Postgres is started as `postgres`, not through `pg_ctl`), so callers can stop it
gracefully, SIGKILL it to simulate a crash, and restart it on the same port and data directory.
Redis lives in `localredis.py`, Postgres in `localpostgres.py`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

REDIS_SERVER_ENV = "VIEWCOUNTER_REDIS_SERVER"
PG_BIN_DIR_ENV = "VIEWCOUNTER_PG_BIN_DIR"
# Postgres refuses to run as root; under root (CI, containers) it runs as this system user.
PG_SYSTEM_USER = "viewcounter-pg"
PG_SUPERUSER = "postgres"
LOG_TAIL_BYTES = 4000
POLL_INTERVAL_S = 0.05
# After a SIGKILL of the postmaster its backends notice and exit on their own; the next start
# fails while any of them still holds the old shared memory segment, so wait for them.
PG_ORPHAN_WAIT_S = 10.0
ATEXIT_STOP_TIMEOUT_S = 10.0

_live: set[ServerProcess] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(log_file: Path) -> str:
    try:
        with log_file.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for proc to exit; True if it did within timeout."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop_all_at_exit() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop(timeout=ATEXIT_STOP_TIMEOUT_S)


atexit.register(_stop_all_at_exit)


class ServerProcess:
    """Lifecycle shared by both servers: Popen, wait until ready, stop, kill, restart.

    `listen` is the address the server binds; `command_prefix` runs the server through another
    command that execs it (e.g. `ip netns exec NS`, to put it in a network namespace). The
    server is reached, and its readiness checked, on 127.0.0.1:port: with another listen
    address or namespace, the caller makes that port lead to it (the tests forward it).
    """

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        port: int | None,
        log_file: Path,
        *,
        listen: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.port: int = port if port is not None else free_port()
        self.log_file = log_file
        self.listen = listen
        self.command_prefix = tuple(command_prefix)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Pid of the running server, or None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _launch_command(self) -> list[str]:
        """The command spawned: the server's own, after the prefix."""
        return [*self.command_prefix, *self._command()]

    def _prepare(self) -> None:
        """Create directories and files the server needs before it is spawned."""

    def _popen_kwargs(self) -> dict[str, object]:
        return {}

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _after_exit(self) -> None:
        """Clean up after the process is gone."""

    def start(self, timeout: float = 20.0) -> None:
        """Spawn the server and block until it answers; RuntimeError with the log tail if not."""
        if self.pid is not None:
            raise RuntimeError(f"{self.name} already running (pid {self.pid})")
        try:
            self._prepare()
        except BaseException:
            self._after_exit()
            raise
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The child inherits the open descriptor, so the log needs no chown under root.
            with self.log_file.open("ab") as log:
                self._proc = subprocess.Popen(
                    self._launch_command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Own session: a terminal Ctrl-C must not reach the server before the
                    # processes that use it have shut down.
                    start_new_session=True,
                    **self._popen_kwargs(),  # type: ignore[call-overload]
                )
            _live.add(self)
            self._wait_ready(self._proc, timeout)
        except BaseException:
            # Covers a failed spawn, a server that died or hung, and Ctrl-C while waiting.
            self.kill()
            self._after_exit()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._is_ready():
            if proc.poll() is not None:
                what = f"exited with code {proc.returncode} during startup"
                raise RuntimeError(self._failure(what))
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure(f"not ready after {timeout:g} s"))
            time.sleep(POLL_INTERVAL_S)

    def _failure(self, what: str) -> str:
        return f"{self.name} on port {self.port} {what}; log {self.log_file}:\n" + _log_tail(
            self.log_file
        )

    def _forget(self) -> None:
        _live.discard(self)
        self._proc = None
        self._after_exit()

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down gracefully; SIGKILL if it is still running after timeout."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            if not _reap(proc, timeout):
                self.kill()
                return
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server (a crash, as far as it can tell) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._forget()

    def restart(self) -> None:
        """Stop if running, then start again on the same port and data directory."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        if self.pid is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()  # whatever happened inside
