"""A TCP relay between network namespaces, run on a thread of the test process.

It listens on 127.0.0.1 in one namespace (ours by default) and forwards each connection to a
target address in another (or the same) namespace: the thread enters the namespaces with
setns(2), which moves only that thread; sockets keep the namespace they were created in.
Two uses in the network chaos tests (tests/chaos/test_network.py):

- the test reaches a server inside a namespace through 127.0.0.1 of its own (no address
  outside loopback and the test namespaces is ever used);
- a slow link: inside a client's namespace, the relay sits in the client's path to a server
  and holds every chunk the client sends for `latency_s` before passing it on (order kept, no
  throughput limit beyond the delay itself: a pipelined stream is delayed, not serialized).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
CHUNK_BYTES = 65536
START_TIMEOUT_S = 10.0


def enter_netns(path: Path) -> None:
    """Move the calling thread into the network namespace at `path` (a /run/netns file or
    /proc/PID/ns/net)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def _ns_path(name: str | None, own: Path) -> Path:
    return own if name is None else NETNS_DIR / name


@dataclass
class Relay:
    """127.0.0.1:`port` in `listen_ns` → `target` in `target_ns` (None: the namespace of the
    process, i.e. of its main thread). Port 0 picks a free one."""

    target: tuple[str, int]
    listen_ns: str | None = None
    target_ns: str | None = None
    port: int = 0
    latency_s: float = 0.0  # added to the client → server direction while set
    connections: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _links: set[asyncio.Task[None]] = field(default_factory=set)
    _transports: set[asyncio.BaseTransport] = field(default_factory=set)

    def start(self) -> Relay:
        # The process's own namespace, as its main thread sees it (the thread may move).
        own = Path(f"/proc/{os.getpid()}/task/{threading.main_thread().native_id}/ns/net")
        self._thread = threading.Thread(
            target=self._run, args=(own,), name=f"relay->{self.target}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"relay to {self.target} did not start")
        if self._error is not None:
            raise RuntimeError(f"relay to {self.target} failed to start") from self._error
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(START_TIMEOUT_S)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, own: Path) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            if self.listen_ns is not None:
                enter_netns(_ns_path(self.listen_ns, own))
            listener = socket.create_server(("127.0.0.1", self.port))
            self.port = listener.getsockname()[1]
            if self.target_ns != self.listen_ns:
                enter_netns(_ns_path(self.target_ns, own))
            server = loop.run_until_complete(asyncio.start_server(self._handle, sock=listener))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for transport in list(self._transports):
                transport.abort()  # every link ends: its pipes see the connection gone
            if self._links:
                loop.run_until_complete(asyncio.wait(list(self._links), timeout=START_TIMEOUT_S))
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self._transports.add(writer.transport)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            self._transports.add(up_writer.transport)
            await asyncio.gather(
                self._pipe(reader, up_writer, delayed=True),
                self._pipe(up_reader, writer, delayed=False),
                return_exceptions=True,
            )
            up_writer.transport.abort()
            writer.transport.abort()
            self._transports.discard(up_writer.transport)
        finally:
            self._transports.discard(writer.transport)
            self._links.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        """Copy one direction; chunks read are written `latency_s` after they arrived."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                chunk = await reader.read(CHUNK_BYTES)
                due = time.monotonic() + (self.latency_s if delayed else 0.0)
                queue.put_nowait((due, chunk))
                if not chunk:
                    break
            await sender
        finally:
            sender.cancel()
            # Either side gone: the other goes too (as a dropped TCP connection would).
            writer.transport.abort()
