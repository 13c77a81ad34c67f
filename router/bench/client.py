"""A lean HTTP/1.1 client on asyncio streams, for the load generator.

General clients (httpx, aiohttp) spend most of a small request's cost in
their own machinery; this one does only what a benchmark needs (keep-alive,
Content-Length and chunked bodies, Server-Sent Events with a timestamp per
event), so one core can drive well over a thousand short requests a second
and the client is not what is measured.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from router.bench.stats import (
    BEFORE_FIRST_BYTE,
    CONNECT,
    HTTP_STATUS,
    MID_STREAM,
    RequestRecord,
)


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_url(cls, url: str, path: str, key: str | None = None) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: give an http://host:port URL")
        headers = (("Authorization", f"Bearer {key}"),) if key else ()
        return cls(parts.hostname, parts.port or 80, path, headers)


class ConnectionLost(Exception):
    """The server closed or reset the connection."""


@dataclass
class _Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.target.host, self.target.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    @property
    def is_open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def send(self, body: bytes) -> None:
        assert self.writer is not None
        head = [f"POST {self.target.path} HTTP/1.1", f"Host: {self.target.host}",
                "Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in self.target.headers]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def answer(self) -> _Answer:
        assert self.reader is not None
        line = await self.reader.readline()
        if not line:
            raise ConnectionLost("closed before the status line")
        status = int(line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n"):
                return _Answer(status, headers)
            if not line:
                raise ConnectionLost("closed inside the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    async def body(self, answer: _Answer) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk."""
        assert self.reader is not None
        if answer.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise ConnectionLost("closed inside a chunked body")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    await self.reader.readline()
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        else:
            length = int(answer.headers.get("content-length", "0"))
            if length:
                yield await self.reader.readexactly(length)
        if answer.headers.get("connection", "").lower() == "close":
            self.close()


def _content(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    return str((delta or {}).get("content") or "") if delta is not None else str(
        choice.get("text") or "")


async def run_request(conn: Connection, body: bytes, stream: bool, run_start: float
                      ) -> RequestRecord:
    """Send one request on ``conn`` and record what the client saw.

    A kept-alive connection the server closed while idle (nginx does on a
    reload) is reopened once and the request sent again: nothing reached a
    replica, and every HTTP client does the same.
    """
    sent = time.perf_counter()
    start = sent - run_start
    for attempt in (0, 1):
        reused = conn.is_open
        try:
            if not reused:
                await conn.open()
        except OSError as exc:
            return RequestRecord(start, None, error_phase=CONNECT, error=str(exc))
        try:
            await conn.send(body)
            answer = await conn.answer()
            break
        except (ConnectionLost, ConnectionError, asyncio.IncompleteReadError) as exc:
            conn.close()
            if reused and attempt == 0:
                continue
            return RequestRecord(start, None, error_phase=BEFORE_FIRST_BYTE, error=str(exc))
    replica = answer.headers.get("x-fleet-replica") or None
    if answer.status != 200:
        try:
            text = b"".join([chunk async for chunk in conn.body(answer)])
        except (ConnectionLost, ConnectionError, asyncio.IncompleteReadError):
            conn.close()
            text = b""
        return RequestRecord(start, answer.status, replica, error_phase=HTTP_STATUS,
                             error=text[:300].decode(errors="replace"),
                             refused_in=time.perf_counter() - sent,
                             retry_after=_seconds(answer.headers.get("retry-after")))
    if not stream:
        return await _whole(conn, answer, start, sent, replica)
    return await _streamed(conn, answer, start, sent, replica)


async def _whole(conn: Connection, answer: _Answer, start: float, sent: float,
                 replica: str | None) -> RequestRecord:
    try:
        raw = b"".join([chunk async for chunk in conn.body(answer)])
    except (ConnectionLost, ConnectionError, asyncio.IncompleteReadError) as exc:
        conn.close()
        return RequestRecord(start, 200, replica, error_phase=MID_STREAM, error=str(exc))
    done = time.perf_counter() - sent
    try:
        usage = json.loads(raw)["usage"]
        tokens, total = int(usage["completion_tokens"]), int(usage["total_tokens"])
    except (ValueError, KeyError, TypeError):
        tokens, total = 0, None
    return RequestRecord(start, 200, replica, ttft=done, e2e=done, output_tokens=tokens,
                         total_tokens=total)


async def _streamed(conn: Connection, answer: _Answer, start: float, sent: float,
                    replica: str | None) -> RequestRecord:
    buffer = b""
    token_times: list[float] = []
    usage_tokens: int | None = None
    total_tokens: int | None = None
    finished = False
    try:
        async for chunk in conn.body(answer):
            now = time.perf_counter()
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ").strip()
                if data == b"[DONE]":
                    finished = True
                    continue
                if not data:
                    continue
                parsed = json.loads(data)
                if parsed.get("usage"):
                    usage_tokens = int(parsed["usage"]["completion_tokens"])
                    total_tokens = int(parsed["usage"]["total_tokens"])
                if _content(parsed):
                    token_times.append(now)
    except (ConnectionLost, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        return RequestRecord(start, 200, replica, error_phase=MID_STREAM, error=str(exc))
    if not finished:
        return RequestRecord(start, 200, replica, error_phase=MID_STREAM,
                             error="the stream ended without [DONE]")
    end = time.perf_counter()
    ttft = token_times[0] - sent if token_times else end - sent
    gaps = tuple(b - a for a, b in zip(token_times, token_times[1:], strict=False))
    return RequestRecord(start, 200, replica, ttft=ttft, e2e=end - sent, itl=gaps,
                         output_tokens=usage_tokens if usage_tokens is not None
                         else len(token_times), total_tokens=total_tokens)


def _seconds(header: str | None) -> float | None:
    """A Retry-After in seconds; None when absent or an HTTP date."""
    try:
        return None if header is None else float(header)
    except ValueError:
        return None
