"""A throwaway or local Postgres (pgserver's binaries), run as an unprivileged user under root."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from services.cli.localservers import (
    PG_BIN_DIR_ENV,
    PG_ORPHAN_WAIT_S,
    PG_SUPERUSER,
    PG_SYSTEM_USER,
    POLL_INTERVAL_S,
    ServerProcess,
)


def postgres_bin_dir() -> Path:
    """Directory with `postgres`, `initdb`, `pg_isready`, `psql`: env, pgserver, then PATH."""
    override = os.environ.get(PG_BIN_DIR_ENV)
    if override:
        return Path(override)
    # Importing pgserver has side effects (a runtime dir, a platformdirs warning), and its
    # POSTGRES_BIN_PATH is just <package>/pginstall/bin, so locate the package without importing.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "postgres").is_file():
                return candidate
    for name in ("postgres", "initdb"):
        found = shutil.which(name)
        if found:
            return Path(found).resolve().parent
    raise RuntimeError(
        f"no Postgres binaries found: set {PG_BIN_DIR_ENV}, pip install pgserver, "
        "or put postgres on PATH"
    )


class PostgresProcess(ServerProcess):
    """A Postgres cluster in data_dir served on 127.0.0.1 with trust auth for `postgres`.

    fsync=False also turns synchronous_commit off: a commit is acknowledged before its WAL is
    written, so a SIGKILL can lose the last ~0.6 s of commits. Crash tests need fsync=True.
    """

    name = "postgres"
    # SIGINT is Postgres' "fast" shutdown: abort sessions, checkpoint, exit.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fsync: bool = True,
        log_file: Path | None = None,
        listen: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        data_dir = data_dir.resolve()
        default_log = data_dir.parent / f"{data_dir.name}.log"
        super().__init__(
            port,
            log_file if log_file is not None else default_log,
            listen=listen,
            command_prefix=command_prefix,
        )
        self.data_dir = data_dir.resolve()  # the server runs with cwd "/"
        self.fsync = fsync
        self._socket_dir: Path | None = None
        self._bin_dir: Path | None = None

    def url(self, database: str = "postgres") -> str:
        """Connection URL for database as the trusted superuser."""
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def bin_dir(self) -> Path:
        """Directory of the Postgres binaries this server runs."""
        if self._bin_dir is None:
            self._bin_dir = postgres_bin_dir()
        return self._bin_dir

    def _as_pg_user(self) -> dict[str, object]:
        """Popen arguments that run a Postgres binary as the unprivileged user under root."""
        # cwd "/" because the caller's cwd may be unreadable to the unprivileged user.
        kwargs: dict[str, object] = {"cwd": "/"}
        if os.geteuid() == 0:
            user = _ensure_system_user(PG_SYSTEM_USER)
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return kwargs

    def _popen_kwargs(self) -> dict[str, object]:
        # A prefixed server drops root only after its prefix ran (see _launch_command).
        return {"cwd": "/"} if self.command_prefix else self._as_pg_user()

    def _launch_command(self) -> list[str]:
        if not self.command_prefix or os.geteuid() != 0:
            return super()._launch_command()
        # The prefix (`ip netns exec NS`) needs root: the user changes after it, by setpriv.
        user = _ensure_system_user(PG_SYSTEM_USER)
        drop_root = [
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--",
        ]  # fmt: skip
        return [*self.command_prefix, *drop_root, *self._command()]

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Postgres insists on 0700 (or 0750) for its data directory.
        self.data_dir.chmod(0o700)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="vcpg-"))  # short: sun_path is 107 bytes
        if os.geteuid() == 0:
            user = _ensure_system_user(PG_SYSTEM_USER)
            _make_traversable(self.bin_dir)
            _make_traversable(self.data_dir)
            for path in (self.data_dir, self._socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.listen != "127.0.0.1":
            self._trust_all_hosts()

    def _trust_all_hosts(self) -> None:
        """initdb trusts loopback clients only; a server listening elsewhere (the tests'
        network namespaces) is reachable only where its caller chose, so it trusts them all."""
        hba = self.data_dir / "pg_hba.conf"
        line = "host all all all trust\n"
        if line not in hba.read_text():
            with hba.open("a") as out:
                out.write(line)

    def _initdb(self) -> None:
        command = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "--auth=trust",
            "-U", PG_SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        if not self.fsync:
            command.append("--no-sync")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                **self._as_pg_user(),  # type: ignore[call-overload]
            )
        if result.returncode != 0:
            raise RuntimeError(self._failure(f"initdb failed with code {result.returncode}"))

    def _command(self) -> list[str]:
        command = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.listen}",
            "-c", f"unix_socket_directories={self._socket_dir}",
        ]  # fmt: skip
        if not self.fsync:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                command += ["-c", setting]
        return command

    def _is_ready(self) -> bool:
        # An open port is not enough: during startup or crash recovery connections are refused.
        # (A bare TCP probe would also log "incomplete startup packet" on every poll.)
        command = [
            str(self.bin_dir / "pg_isready"),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-U", PG_SUPERUSER,
            "-d", "postgres",
            "-t", "1",
        ]  # fmt: skip
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def kill(self) -> None:
        """SIGKILL the postmaster, reap it, and wait for its orphaned backends to exit."""
        proc = self._proc
        # Backends call setsid(), so they are found by parent pid, not by process group.
        backends = _child_pids(proc.pid) if proc is not None and proc.poll() is None else []
        super().kill()
        _wait_gone(backends, PG_ORPHAN_WAIT_S)

    def _after_exit(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run sql with the psql binary over TCP and return its unaligned, tuples-only output."""
        command = [
            str(self.bin_dir / "psql"),
            "-X", "-q", "-A", "-t",
            "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-U", PG_SUPERUSER,
            "-d", database,
            "-c", sql,
        ]  # fmt: skip
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def ensure_database(self, name: str) -> bool:
        """Create database name unless it exists; True if it was created."""
        literal = name.replace("'", "''")
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{literal}'").strip():
            return False
        identifier = name.replace('"', '""')
        self.psql(f'CREATE DATABASE "{identifier}"')
        return True

    def __repr__(self) -> str:
        return f"PostgresProcess(port={self.port}, pid={self.pid}, data_dir={self.data_dir})"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """The passwd entry for system user name, creating the user if needed (needs root)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Also covers a concurrent process (another test worker) having created it first.
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"cannot create system user {name!r} to run Postgres as non-root: "
            f"{result.stderr.strip()}"
        ) from None


def _make_traversable(path: Path) -> None:
    """Add o+x to every ancestor of path so an unprivileged user can reach it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of pid from /proc, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses; the fields after its last ")" do not.
    fields = raw.rpartition(")")[2].split()
    return fields[0], int(fields[1])


def _child_pids(pid: int) -> list[int]:
    """Pids whose parent is pid (empty where /proc is unavailable)."""
    children = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                info = _proc_stat(int(entry.name))
                if info is not None and info[1] == pid:
                    children.append(int(entry.name))
    return children


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until every pid has exited (zombies count as exited); SIGKILL stragglers."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        # A zombie has already released its shared memory; only a reaper is missing.
        alive = [pid for pid in alive if (_proc_stat(pid) or ("X", 0))[0] not in ("Z", "X")]
        if not alive:
            return
        if time.monotonic() > deadline:
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(POLL_INTERVAL_S)
