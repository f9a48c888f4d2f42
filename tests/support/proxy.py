"""A small asyncio TCP proxy for the Postgres wire protocol that cuts or delays connections at
chosen points of a transaction.

It looks only at the simple-query messages asyncpg sends for transaction control (`BEGIN;`,
`COMMIT;`), so a fault is armed once and fires on the next transaction that passes:

- `cut_in_transaction`: after BEGIN and two more client messages (the ledger INSERT is among
  the first), the connection is reset both ways: Postgres rolls the transaction back.
- `cut_before_commit`: the COMMIT never reaches Postgres; the connection is reset.
- `lose_commit_reply`: the COMMIT reaches Postgres (it commits), its answer is dropped and the
  connection reset: the client cannot tell whether it committed.
- `stall_commit`: the COMMIT is held for `stall_s` seconds, then delivered.

`latency_s` delays every chunk in both directions (a slow link).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

FAULTS = ("cut_in_transaction", "cut_before_commit", "lose_commit_reply", "stall_commit")
CHUNK_BYTES = 65536
MESSAGES_INTO_TRANSACTION = 3  # BEGIN, then two more client messages


@dataclass
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    since_begin: int | None = None  # client messages since BEGIN, while counting
    drop_reply: bool = False

    def reset(self) -> None:
        for writer in (self.client, self.server):
            writer.transport.abort()


@dataclass
class PostgresProxy:
    """Listens on 127.0.0.1:`port` and forwards to `target_port`."""

    target_port: int
    latency_s: float = 0.0
    stall_s: float = 1.5
    port: int = 0
    fired: list[str] = field(default_factory=list)
    connections: int = 0
    _armed: str | None = None
    _fired_event: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def url(self, database_url: str) -> str:
        """`database_url` pointed at the proxy instead of the server."""
        return database_url.replace(f":{self.target_port}/", f":{self.port}/")

    def arm(self, fault: str) -> None:
        """Fire `fault` once, on the next transaction that reaches its point."""
        if fault not in FAULTS:
            raise ValueError(fault)
        self._armed = fault
        self._fired_event = asyncio.Event()

    async def wait_fired(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until the armed fault has fired."""
        await asyncio.wait_for(self._fired_event.wait(), timeout_s)

    def _fire(self) -> str | None:
        fault, self._armed = self._armed, None
        if fault is not None:
            self.fired.append(fault)
            self._fired_event.set()
        return fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(client=writer, server=up_writer)
        await asyncio.gather(
            self._client_to_server(reader, link),
            self._server_to_client(up_reader, link),
            return_exceptions=True,
        )
        link.reset()

    async def _client_to_server(self, reader: asyncio.StreamReader, link: _Link) -> None:
        while chunk := await reader.read(CHUNK_BYTES):
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if not await self._client_chunk(chunk, link):
                return
            link.server.write(chunk)
            await link.server.drain()
        link.server.write_eof()

    async def _client_chunk(self, chunk: bytes, link: _Link) -> bool:
        """Apply the armed fault to one client chunk; False when the link was cut."""
        armed = self._armed
        if armed == "cut_in_transaction":
            if b"BEGIN" in chunk:
                link.since_begin = 1
            elif link.since_begin is not None:
                link.since_begin += 1
                if link.since_begin >= MESSAGES_INTO_TRANSACTION and self._fire():
                    link.reset()
                    return False
        elif armed is not None and b"COMMIT" in chunk:
            fault = self._fire()
            if fault == "cut_before_commit":
                link.reset()
                return False
            if fault == "lose_commit_reply":
                link.drop_reply = True
            elif fault == "stall_commit":
                await asyncio.sleep(self.stall_s)
        return True

    async def _server_to_client(self, reader: asyncio.StreamReader, link: _Link) -> None:
        while chunk := await reader.read(CHUNK_BYTES):
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if link.drop_reply:
                link.reset()  # the COMMIT's answer never arrives
                return
            link.client.write(chunk)
            await link.client.drain()
        link.client.write_eof()
