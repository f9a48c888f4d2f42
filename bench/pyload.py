"""A small closed-loop HTTP/1.1 load generator, used by bench/run.py when wrk is not installed.

`python -m bench.pyload --port P --path /x --duration 10 --connections 64 --pages 1000` keeps
`connections` keep-alive connections busy, each sending the next POST as soon as the previous
answer arrived, and prints one `WRKJSON {...}` line in the same shape as bench/wrk.lua.
At the deadline every connection finishes the request it has in flight, so the count of 200
answers is exact (wrk abandons in-flight requests instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field

READ_TIMEOUT_S = 10.0


@dataclass
class Stats:
    """What all connections saw."""

    latencies_us: list[int] = field(default_factory=list)
    ok: int = 0
    non2xx: int = 0
    err_connect: int = 0
    err_read: int = 0
    err_timeout: int = 0


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as expected."""


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, whether the connection stays open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(lines[0].decode("latin-1"))
    status = int(parts[1])
    length = 0
    chunked = False
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            keep_alive = False
    if chunked:
        await _read_chunked(reader)
    elif length:
        await reader.readexactly(length)
    return status, keep_alive


_VISITORS = itertools.count()


def _request(host: str, path: str, page: int) -> bytes:
    body = b'{"page":"news/article-%d","visitor":"v%d"}' % (page, next(_VISITORS))
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body)
    )


async def _connection(
    host: str, port: int, path: str, deadline: float, pages: int, first: int, step: int, s: Stats
) -> None:
    page = first
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while time.monotonic() < deadline:
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    s.err_connect += 1
                    await asyncio.sleep(0.01)
                    continue
            start = time.perf_counter_ns()
            writer.write(_request(host, path, page % pages))
            page += step
            try:
                status, keep_alive = await asyncio.wait_for(read_response(reader), READ_TIMEOUT_S)
            except TimeoutError:
                s.err_timeout += 1
                keep_alive, status = False, 0
            except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError):
                s.err_read += 1
                keep_alive, status = False, 0
            if status:
                s.latencies_us.append((time.perf_counter_ns() - start) // 1000)
                if status == 200:
                    s.ok += 1
                if not 200 <= status <= 299:
                    s.non2xx += 1
            if not keep_alive:
                writer.close()
                writer = reader = None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def percentile(sorted_values: list[int], fraction: float) -> int:
    """The value below which `fraction` of sorted_values lie (nearest rank)."""
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(
    host: str, port: int, path: str, duration: float, connections: int, pages: int
) -> dict[str, int]:
    """Drive the load and return the summary."""
    stats = Stats()
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(
        *(
            _connection(host, port, path, deadline, pages, i, connections, stats)
            for i in range(connections)
        )
    )
    elapsed = time.monotonic() - started
    lat = sorted(stats.latencies_us)
    return {
        "requests": len(lat),
        "duration_us": int(elapsed * 1_000_000),
        "p50_us": percentile(lat, 0.50),
        "p99_us": percentile(lat, 0.99),
        "max_us": lat[-1] if lat else 0,
        "ok": stats.ok,
        "non2xx": stats.non2xx,
        "err_connect": stats.err_connect,
        "err_read": stats.err_read,
        "err_write": 0,
        "err_timeout": stats.err_timeout,
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--pages", type=int, default=1000)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    summary = runner(
        run(args.host, args.port, args.path, args.duration, args.connections, args.pages)
    )
    print("WRKJSON " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
