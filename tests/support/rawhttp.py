"""A bare HTTP/1.1 keep-alive client for load tests that need many concurrent requests: httpx
spends about a millisecond of CPU a request, and its pool grows slower with each connection,
so 500 httpx clients in one process measure the client, not the server. This one writes the
request and reads the answer on a connection of its own pool, nothing else. Only as much of
HTTP as the api's JSON answers need (Content-Length bodies)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class Answer:
    """The part of an httpx.Response that chaos.Load reads."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


class RawClient:
    """POSTs JSON to (or GETs from) one host and port, a connection per request in flight (kept
    alive)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self._host = host
        self._port = port
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post(
        self,
        path: str,
        json: Any,  # noqa: A002 (httpx's name)
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send one POST and read its answer; OSError (or IncompleteReadError) when the
        connection failed."""
        return await self._send("POST", path, _dumps(json), headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """Send one GET (`path` with its query string) and read its answer, as `post`."""
        return await self._send("GET", path, None, headers)

    async def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None
    ) -> Answer:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self._host, self._port)
            self._all.append(writer)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if body is not None:
            extra += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {self._host}:{self._port}\r\n{self._headers}"
            f"{extra}\r\n"
        )
        writer.write(head.encode() + (body or b""))
        status_line = await reader.readuntil(b"\r\n")
        length = 0
        keep = True
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                keep = False
        content = await reader.readexactly(length)
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return Answer(int(status_line.split()[1]), content)

    async def aclose(self) -> None:
        """Close every connection opened."""
        for writer in self._all:
            writer.close()
        self._all, self._idle = [], []


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()
