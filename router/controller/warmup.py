"""Warm-up bursts: a replica that starts or restarts is sent a burst of real
requests, straight to its port, before the controller puts it in rotation.

vLLM's GPU build compiles kernels lazily: the first large batch after every
start paid an 8 s stall on an H200 (a Triton sampling kernel). Without a
warm-up the first clients routed to a fresh replica pay it instead.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from router.config.plan import WarmupPlan


@dataclass(frozen=True)
class WarmupResult:
    seconds: float
    ok: int
    failed: int
    slowest_s: float
    first_error: str | None

    def summary(self) -> str:
        text = (f"{self.ok} of {self.ok + self.failed} requests answered in "
                f"{self.seconds:.2f}s (slowest {self.slowest_s:.2f}s)")
        return text + (f"; first error: {self.first_error}" if self.first_error else "")


def _body(plan: WarmupPlan, index: int) -> dict[str, object]:
    # Distinct prompts, so the prefix cache does not turn the burst into one request;
    # ignore_eos keeps every request decoding for max_tokens, as a full batch does.
    text = f"Warm-up request {index}: count from one to twenty."
    if plan.runner == "pooling":
        return {"model": plan.model, "input": text}
    return {"model": plan.model, "max_tokens": plan.max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": text}]}


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, object]
               ) -> tuple[float, str | None]:
    started = time.monotonic()
    try:
        response = await client.post(url, json=body)
        error = None if response.status_code == 200 else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    return time.monotonic() - started, error


async def warm_up(client: httpx.AsyncClient, replica_url: str, plan: WarmupPlan) -> WarmupResult:
    """Send the burst at once and wait for all of it, at most ``plan.timeout_s``."""
    started = time.monotonic()
    url = replica_url + ("/v1/embeddings" if plan.runner == "pooling"
                         else "/v1/chat/completions")
    tasks = [asyncio.create_task(_one(client, url, _body(plan, i))) for i in range(plan.requests)]
    done, pending = await asyncio.wait(tasks, timeout=plan.timeout_s)
    for task in pending:
        task.cancel()
    results = [task.result() for task in done]
    errors = [error for _, error in results if error]
    failed = len(errors) + len(pending)
    if pending:
        errors.insert(0, f"{len(pending)} unanswered after {plan.timeout_s:g}s")
    return WarmupResult(
        seconds=time.monotonic() - started,
        ok=len(results) - (failed - len(pending)),
        failed=failed,
        slowest_s=max((seconds for seconds, _ in results), default=0.0),
        first_error=errors[0] if errors else None)
