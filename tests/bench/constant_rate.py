"""A constant-rate load generator: latency at a fixed offered load, free of coordinated omission.

wrk measures how fast a server answers when every connection sends its next request as soon
as the last one is answered: when the server stalls, the load stalls with it, and the slow
moments are sampled once instead of for every request that should have been sent meanwhile.
Here the send times are fixed in advance (request i at start + i / rate) and each latency is
counted from that scheduled time, not from when a connection was free to send it: a stall
shows in every request it delays. Debian has no wrk2; this does its job for one scenario.

Keep-alive HTTP/1.1 on a few connections with asyncio streams on uvloop, the
request bytes built once per path, the response read by its Content-Length.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvloop


@dataclass(frozen=True)
class Request:
    method: str
    paths: Sequence[str]  # each request goes to one of these, at random
    headers: dict[str, str]
    body: bytes = b""
    expect: int = 200


@dataclass(frozen=True)
class Latency:
    rate: float  # offered, requests per second
    achieved: float  # answered per second over the schedule
    sent: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # a status other than the expected one, or a broken connection


def _encode(request: Request, host: str, path: str) -> bytes:
    lines = [f"{request.method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(request.body)}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body


async def _answer(reader: asyncio.StreamReader) -> int:
    """The status of one response, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _run(url: str, request: Request, *, rate: float, duration: float, connections: int) -> Latency:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    encoded = [_encode(request, f"{host}:{port}", path) for path in request.paths]
    total = max(1, int(rate * duration))
    latencies: list[float] = []
    errors = 0
    next_slot = 0
    start = time.perf_counter() + 0.1

    async def connection() -> None:
        nonlocal next_slot, errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_slot < total:
                slot = next_slot
                next_slot += 1
                scheduled = start + slot / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(random.choice(encoded))
                try:
                    status = await _answer(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.perf_counter() - scheduled)
                if status != request.expect:
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [0.0]
    return Latency(
        rate=rate,
        achieved=len(latencies) / elapsed if elapsed > 0 else 0.0,
        sent=total,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        max_ms=ordered[-1] * 1000,
        errors=errors,
    )


def measure(url: str, request: Request, *, rate: float, duration: float, connections: int = 32) -> Latency:
    """Offer `rate` requests per second for `duration` seconds on `connections` connections."""
    return uvloop.run(_run(url, request, rate=rate, duration=duration, connections=connections))
