"""The load generator: what to send (Workload), when (open-loop Poisson
arrivals or a closed loop of concurrent clients), and the run itself.

Open loop is how production traffic behaves: requests arrive at a rate
whether or not earlier ones finished, so queues show up as latency. A closed
loop of C clients measures the most the fleet sustains at concurrency C.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from router.bench.client import Connection, Target, run_request
from router.bench.stats import RequestRecord, percentile
from router.errors import SpecError
from router.fleet_status import PublicFleetStatus

Range = tuple[int, int]
# Open-loop requests in flight beyond this are a sign the fleet has stopped
# keeping up; new arrivals are then counted as dropped by the client.
MAX_IN_FLIGHT = 20_000
# How often the fleet's weights are sampled for the timeline plot.
WEIGHT_SAMPLE_S = 0.25


def parse_range(text: str, what: str) -> Range:
    """'128' or '64-256' -> (low, high)."""
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError as exc:
        raise SpecError(f"{what}: {text!r} is not N or LOW-HIGH",
                        hint=f"e.g. {what} 128 or {what} 64-256") from exc
    if not 1 <= bounds[0] <= bounds[1]:
        raise SpecError(f"{what}: {text!r} needs 1 <= LOW <= HIGH", hint=f"e.g. {what} 64-256")
    return bounds


def load_prompts(path: Path) -> tuple[str, ...]:
    """A JSONL file, one {"prompt": "..."} per line."""
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecError(f"--prompts: cannot read {path}: {exc.strerror}",
                        hint="give a JSONL file with one {\"prompt\": \"...\"} per line") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)["prompt"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"--prompts: {path}:{number} is not {{\"prompt\": \"...\"}}",
                            hint="one JSON object with a string \"prompt\" per line") from exc
        if not isinstance(prompt, str) or not prompt:
            raise SpecError(f"--prompts: {path}:{number}: \"prompt\" must be a non-empty string")
        prompts.append(prompt)
    if not prompts:
        raise SpecError(f"--prompts: {path} holds no prompts")
    return tuple(prompts)


@dataclass(frozen=True)
class Workload:
    """What each request asks for."""

    model: str | None = None
    chat: bool = True
    stream: bool = True
    prompt_words: Range = (32, 32)
    output_tokens: Range = (64, 64)
    prompts: tuple[str, ...] = ()
    seed: int = 0
    # Requests carry one of this many session keys (the body's `user`), for a
    # gateway with affinity; 0: none.
    sessions: int = 0
    # Streams ask for their usage chunk (stream_options.include_usage).
    ask_usage: bool = True

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    def body(self, rng: random.Random) -> bytes:
        if self.prompts:
            prompt = rng.choice(self.prompts)
        else:
            # Distinct words, so no two prompts share a cached prefix by accident.
            words = rng.randint(*self.prompt_words)
            prompt = " ".join(f"w{rng.randrange(100_000)}" for _ in range(words))
        data: dict[str, Any] = {"max_tokens": rng.randint(*self.output_tokens),
                                # Every request produces its full length.
                                "ignore_eos": True, "temperature": 0}
        if self.model:
            data["model"] = self.model
        if self.sessions:
            # The OpenAI field the gateway's session affinity keys on.
            data["user"] = f"session-{rng.randrange(self.sessions)}"
        if self.chat:
            data["messages"] = [{"role": "user", "content": prompt}]
        else:
            data["prompt"] = prompt
        if self.stream:
            data["stream"] = True
            if self.ask_usage:
                data["stream_options"] = {"include_usage": True}
        return json.dumps(data).encode()


@dataclass(frozen=True)
class Arrivals:
    mode: Literal["poisson", "closed"]
    rate: float = 0.0         # requests/s (poisson)
    concurrency: int = 0      # clients (closed)
    # Closed loop: a client told Retry-After waits that long before its next
    # request, as the openai SDK does, instead of asking again at once.
    honour_retry_after: bool = False

    def describe(self) -> str:
        return (f"Poisson arrivals at {self.rate:g} requests/s" if self.mode == "poisson"
                else f"closed loop, {self.concurrency} concurrent clients"
                + (", each waiting out a Retry-After" if self.honour_retry_after else ""))


@dataclass
class RunResult:
    records: list[RequestRecord]
    duration_s: float
    # Open loop: how late requests left against their scheduled time.
    send_lag_p99_s: float | None
    dropped: int
    client_cpu_share: float
    weights: list[dict[str, Any]] = field(default_factory=list)

    def client_bound(self, arrivals: Arrivals) -> str | None:
        """Why the client, not the fleet, may have set the figures; None if not."""
        reasons = []
        if self.client_cpu_share > 0.9:
            reasons.append(f"the client used {self.client_cpu_share:.0%} of its core")
        if self.send_lag_p99_s is not None and self.send_lag_p99_s > 0.05:
            reasons.append(f"p99 of requests left {self.send_lag_p99_s * 1000:.0f} ms "
                           "after their scheduled time")
        if self.dropped:
            reasons.append(f"{self.dropped} arrivals were dropped with {MAX_IN_FLIGHT} in "
                           "flight")
        return "; ".join(reasons) or None


# (seconds elapsed, requests done, of those failed)
Progress = Callable[[float, int, int], None]


class _Pool:
    """Idle keep-alive connections, reused before new ones are opened."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.idle: list[Connection] = []

    def take(self) -> Connection:
        return self.idle.pop() if self.idle else Connection(self.target)

    def give(self, conn: Connection) -> None:
        if conn.is_open:
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()


async def _sample_weights(url: str, key: str | None, into: list[dict[str, Any]],
                          run_start: float) -> None:
    """Poll the gateway's /fleet/status for the controller's weights."""
    import httpx
    from pydantic import ValidationError

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            try:
                response = await client.get(f"{url}/fleet/status", headers=headers)
                if response.status_code == 200:
                    status = PublicFleetStatus.model_validate_json(response.content)
                    # A controller that has not decided yet (just restarted) knows
                    # no weights; nginx keeps the ones it had.
                    if any(r.in_rotation is not None for r in status.replicas):
                        into.append({"t": time.perf_counter() - run_start,
                                     "weights": status.routed_weights()})
            except (httpx.HTTPError, ValidationError):
                pass
            await asyncio.sleep(WEIGHT_SAMPLE_S)


async def run(url: str, workload: Workload, arrivals: Arrivals, duration_s: float,
              key: str | None = None, progress: Progress | None = None,
              sample_weights: bool = True, stop: asyncio.Event | None = None) -> RunResult:
    """Send load for ``duration_s`` (or until ``stop`` is set) and wait for
    what is in flight to finish."""
    target = Target.from_url(url, workload.path, key)
    rng = random.Random(workload.seed)
    records: list[RequestRecord] = []
    lags: list[float] = []
    dropped = 0
    pool = _Pool(target)
    weights: list[dict[str, Any]] = []
    run_start = time.perf_counter()
    cpu_start = time.process_time()
    sampler = (asyncio.create_task(_sample_weights(url, key, weights, run_start))
               if sample_weights else None)
    reporter = asyncio.create_task(_report_progress(progress, records, duration_s, run_start))
    in_flight: set[asyncio.Task[None]] = set()

    async def one(body: bytes) -> None:
        conn = pool.take()
        try:
            records.append(await run_request(conn, body, workload.stream, run_start))
        finally:
            pool.give(conn)

    deadline = run_start + duration_s
    try:
        if arrivals.mode == "poisson":
            scheduled = run_start
            while True:
                scheduled += rng.expovariate(arrivals.rate)
                if scheduled >= deadline or (stop is not None and stop.is_set()):
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lags.append(time.perf_counter() - scheduled)
                if len(in_flight) >= MAX_IN_FLIGHT:
                    dropped += 1
                    continue
                task = asyncio.create_task(one(workload.body(rng)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        else:
            async def client() -> None:
                conn = Connection(target)
                try:
                    while time.perf_counter() < deadline and not (stop and stop.is_set()):
                        record = await run_request(conn, workload.body(rng), workload.stream,
                                                   run_start)
                        records.append(record)
                        if arrivals.honour_retry_after and record.retry_after:
                            await asyncio.sleep(min(record.retry_after,
                                                    max(0.0, deadline - time.perf_counter())))
                finally:
                    conn.close()

            await asyncio.gather(*(client() for _ in range(arrivals.concurrency)))
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        reporter.cancel()
        if sampler is not None:
            sampler.cancel()
        pool.close()
    wall = time.perf_counter() - run_start
    return RunResult(records=sorted(records, key=lambda r: r.start), duration_s=wall,
                     send_lag_p99_s=percentile(lags, 99) if lags else None, dropped=dropped,
                     client_cpu_share=(time.process_time() - cpu_start) / wall, weights=weights)


async def _report_progress(progress: Progress | None, records: Sequence[RequestRecord],
                           duration_s: float, run_start: float) -> None:
    if progress is None:
        return
    while True:
        await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - run_start
        failed = sum(1 for r in records if not r.ok)
        progress(min(elapsed, duration_s), len(records), failed)


def terminal_progress(duration_s: float) -> Progress:
    """A one-line progress bar on stderr (a line every 5 s when not a terminal)."""
    started = time.monotonic()
    last_line = [0.0]
    tty = sys.stderr.isatty()

    def show(elapsed: float, done: int, failed: int) -> None:
        width = 30
        filled = int(width * min(1.0, elapsed / duration_s))
        rate = done / max(1e-9, time.monotonic() - started)
        text = (f"[{'#' * filled}{'.' * (width - filled)}] {elapsed:5.1f}/{duration_s:g}s  "
                f"done {done}  failed {failed}  {rate:,.0f} req/s")
        if tty:
            sys.stderr.write("\r" + text)
            sys.stderr.flush()
        elif time.monotonic() - last_line[0] >= 5:
            last_line[0] = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    return show


def machine() -> dict[str, Any]:
    """The machine a run happened on, for the report."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text()
                          .splitlines() if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
            "python": sys.version.split()[0]}
