"""How much load one simulator process takes: a benchmark, not a test.

    python -m router.sim.selfbench [--seconds 10] [--streams 500] [--out DIR]

It starts one simulated replica pinned to core 0 (taskset) and drives it from
this process, pinned to core 1, with a keep-alive HTTP/1.1 client written on
raw asyncio streams (a general-purpose client costs more CPU than the
simulator and would measure itself). Two phases:

1. short non-streamed requests (max_tokens=1) from --connections keep-alive
   connections for --seconds: requests/s and the error count;
2. --streams concurrent SSE streams (ignore_eos, --stream-tokens tokens
   each): how many were open at once, the simulator's own
   vllm:num_requests_running at the peak, and whether every stream ended
   with [DONE].

The latency model is set to near-zero step times so that what is measured is
the simulator's HTTP and bookkeeping overhead, the thing that must never
bottleneck a gateway benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import requests

from router.config.sim import SimSettings

BODY_SHORT = json.dumps({"model": "sim-model", "prompt": "hi", "max_tokens": 1}).encode()


def _request(body: bytes) -> bytes:
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def short_requests(port: int, connections: int, seconds: float) -> dict[str, Any]:
    request = _request(BODY_SHORT)
    done = errors = 0
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop_at:
                writer.write(request)
                status = await _read_response(reader)
                if status == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - start
    return {"requests": done, "errors": errors, "seconds": round(elapsed, 2),
            "requests_per_s": round(done / elapsed, 1), "connections": connections}


async def streams(port: int, count: int, tokens: int) -> dict[str, Any]:
    body = json.dumps({"model": "sim-model", "prompt": "hi", "max_tokens": tokens,
                       "ignore_eos": True, "stream": True}).encode()
    request = _request(body)
    open_now = peak_open = completed = chunks = 0
    all_open = asyncio.Event()

    async def one() -> None:
        nonlocal open_now, peak_open, completed, chunks
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            open_now += 1
            peak_open = max(peak_open, open_now)
            if open_now == count:
                all_open.set()
            while True:
                line = await reader.readline()
                if line.startswith(b"data: "):
                    chunks += 1
                    if line.startswith(b"data: [DONE]"):
                        completed += 1
                        break
        finally:
            open_now -= 1
            writer.close()

    start = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    running_at_peak = None
    try:
        await asyncio.wait_for(all_open.wait(), timeout=60)
        running_at_peak = await asyncio.to_thread(_running, port)
    except TimeoutError:
        pass
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    return {"streams": count, "peak_open": peak_open, "completed_with_done": completed,
            "sim_num_requests_running_at_peak": running_at_peak,
            "sse_events": chunks, "seconds": round(elapsed, 2),
            "tokens_per_s": round((chunks - completed) / elapsed, 1)}


def _running(port: int) -> float | None:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--stream-tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write result.json here")
    args = parser.parse_args()

    port = _free_port()
    settings = SimSettings(max_num_seqs=max(1024, args.streams), decode_step_s=0.02,
                           decode_s_per_seq=0.0, prefill_s_per_token=0.0,
                           kv_capacity_tokens=10_000_000)
    server = [sys.executable, "-m", "router.cli", "sim", "serve", "--port", str(port),
              "--settings", settings.model_dump_json()]
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if pinned:
        server = ["taskset", "-c", "0", *server]
        os.sched_setaffinity(0, {1})
    proc = subprocess.Popen(server)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                        "python": platform.python_version(), "pinned": pinned},
            "command": "python -m router.sim.selfbench " + " ".join(sys.argv[1:]),
        }
        phases: dict[str, Callable[[], Coroutine[Any, Any, dict[str, Any]]]] = {
            "short_requests": lambda: short_requests(port, args.connections, args.seconds),
            "streams": lambda: streams(port, args.streams, args.stream_tokens),
        }
        for name, phase in phases.items():
            cpu_before, wall_before = _cpu_seconds(proc.pid), time.monotonic()
            result[name] = asyncio.run(phase())
            # Near 1.0: the simulator's core was saturated, so the figure is
            # the simulator's limit; well below: the client was.
            result[name]["sim_core_utilisation"] = round(
                (_cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - wall_before), 2)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
