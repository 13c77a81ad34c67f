"""Streaming load at one address, retried as the openai SDK retries, one JSON
line per request: the client side of the gateway-pair drills.

Usage: python -m router.bench.vip_load --url URL [--key KEY] --model NAME
           --rate R --seconds S --out FILE [--max-tokens N]
       python -m router.bench.vip_load --url URL --compare NAME=URL ... --model NAME
           --requests N --out FILE

Run on a lab host (router.bench.netlab) while a drill pulls a gateway. Each
request is a chat completion stream on a new connection. Before its first
byte a request is tried again like the openai SDK does by default (two
retries, 0.5 s then 1 s, less up to a quarter of jitter, on connection
errors, timeouts, 408, 409, 429 and 5xx; 5 s to connect). After its first
byte nothing is retried: a stream that ends without its [DONE], or is silent
for ``--stall`` seconds, is cut.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

SDK_MAX_RETRIES = 2
SDK_CONNECT_TIMEOUT_S = 5.0
RETRIED_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def sdk_retry_delay(retry: int, draw: float) -> float:
    """The openai SDK's wait before retry ``retry`` (0-based), ``draw`` in [0, 1)."""
    return min(0.5 * 2.0 ** retry, 8.0) * (1 - 0.25 * draw)


@dataclass
class Outcome:
    started: float
    attempts: int = 0
    # Wall-clock times (time.time()) so the drill can line them up with its own.
    connected_at: float | None = None
    first_byte_at: float | None = None
    ended_at: float | None = None
    # ok, failed (no first byte after the retries) or cut (after its first byte).
    result: str = "failed"
    error: str | None = None
    # What each attempt that was tried again saw.
    retried_after: list[str] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, object],
                      stall_s: float) -> Outcome:
    outcome = Outcome(started=time.time())
    for attempt in range(SDK_MAX_RETRIES + 1):
        outcome.attempts = attempt + 1
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code in RETRIED_STATUSES:
                    outcome.error = f"HTTP {response.status_code}"
                elif response.status_code != 200:
                    outcome.error = f"HTTP {response.status_code}"
                    break
                else:
                    return await _read_stream(response, outcome, stall_s)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            if outcome.first_byte_at is not None:
                outcome.result, outcome.error = "cut", type(exc).__name__
                outcome.ended_at = time.time()
                return outcome
            outcome.error = type(exc).__name__
        if attempt < SDK_MAX_RETRIES:
            outcome.retried_after.append(outcome.error or "unknown")
            await asyncio.sleep(sdk_retry_delay(attempt, random.random()))
    outcome.ended_at = time.time()
    return outcome


async def _read_stream(response: httpx.Response, outcome: Outcome, stall_s: float) -> Outcome:
    outcome.connected_at = time.time()
    lines = response.aiter_lines()
    while True:
        try:
            line = await asyncio.wait_for(anext(lines), stall_s)
        except StopAsyncIteration:
            outcome.result, outcome.error = "cut", "ended without [DONE]"
            break
        except TimeoutError:
            outcome.result, outcome.error = "cut", f"silent for {stall_s:g}s"
            break
        if not line.startswith("data:"):
            continue
        if outcome.first_byte_at is None:
            outcome.first_byte_at = time.time()
        if line.strip() == "data: [DONE]":
            outcome.result, outcome.error = "ok", None
            break
    outcome.ended_at = time.time()
    return outcome


async def run(url: str, key: str | None, model: str, rate: float, seconds: float,
              max_tokens: int, stall_s: float, out: Path) -> None:
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Count slowly from one to one hundred."}]}
    timeout = httpx.Timeout(stall_s + 1, connect=SDK_CONNECT_TIMEOUT_S)
    # A new connection per request: a pooled one to a host whose link is gone
    # waits out the read timeout instead of retrying.
    limits = httpx.Limits(max_keepalive_connections=0, max_connections=None)
    tasks: list[asyncio.Task[Outcome]] = []
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(
                one_request(client, url + "/v1/chat/completions", body, stall_s)))
            await asyncio.sleep(random.expovariate(rate))
        outcomes = await asyncio.gather(*tasks)
    with out.open("w", encoding="utf-8") as handle:
        for outcome in outcomes:
            handle.write(json.dumps(asdict(outcome)) + "\n")


def compare_latency(urls: dict[str, str], key: str | None, model: str, requests: int,
                    out: Path) -> None:
    """``requests`` short answers from each URL, interleaved so that drift on a
    busy machine falls on both alike; one kept-alive connection per URL, as a
    client's pool would hold. Writes the seconds of each, per URL."""
    body = {"model": model, "max_tokens": 1,
            "messages": [{"role": "user", "content": "Say yes."}]}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    clients = {name: httpx.Client(headers=headers, timeout=30) for name in urls}
    seconds: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for _ in range(requests):
            for name, url in urls.items():
                started = time.perf_counter()
                clients[name].post(url + "/v1/chat/completions", json=body).raise_for_status()
                seconds[name].append(time.perf_counter() - started)
    finally:
        for client in clients.values():
            client.close()
    out.write_text(json.dumps(seconds), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.bench.vip_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", help="API key, where the gateway wants one")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--requests", type=int, default=300,
                        help="--compare: short answers from each URL")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--stall", type=float, default=5.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", metavar="NAME=URL", action="append", default=[],
                        help="instead of the load: --requests short answers from --url (as "
                             "'pair') and from each of these, interleaved")
    args = parser.parse_args(argv)
    if args.compare:
        urls = {"pair": args.url.rstrip("/")}
        urls.update(item.split("=", 1) for item in args.compare)
        compare_latency(urls, args.key, args.model, args.requests, args.out)
        return 0
    if args.rate is None or args.seconds is None:
        parser.error("the load needs --rate and --seconds")
    asyncio.run(run(args.url.rstrip("/"), args.key, args.model, args.rate, args.seconds,
                    args.max_tokens, args.stall, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
