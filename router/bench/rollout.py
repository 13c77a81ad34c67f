"""`fleet drill rollout --to FILE`: `fleet apply` under load, and what clients saw.

Poisson load runs through the gateway while `fleet apply` changes the
running cluster to FILE; the drill counts requests that failed before their
first byte and streams that were cut, reads from the gateway's /fleet/status
how many replicas were in rotation at the lowest, samples how busy the
replicas' batch slots were, and takes each replica's drain, restart and
rejoin times from the apply itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.bench import load, stats
from router.bench.drill import running_cluster
from router.bench.report import Event
from router.bench.scenario_kit import sample_replicas
from router.config.spec import ClusterSpec
from router.errors import ClusterError, SpecError
from router.runtime import apply
from router.runtime.state import ClusterState

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RolloutPlan:
    to_spec: Path
    rate: float
    # Closed loop with this many clients instead of Poisson arrivals at ``rate``.
    streams: int = 0
    before_s: float = 10.0
    after_s: float = 10.0
    output_tokens: load.Range = (32, 64)
    prompt_words: load.Range = (32, 32)
    # A bound on the whole drill; the apply's own bounds end it sooner.
    limit_s: float = 3600.0

    @property
    def arrivals(self) -> load.Arrivals:
        if self.streams:
            return load.Arrivals("closed", concurrency=self.streams)
        return load.Arrivals("poisson", self.rate)


@dataclass
class RolloutResult:
    plan: RolloutPlan
    engine: str
    replicas: int
    run: load.RunResult
    # Seconds since the load started: the apply's start and end, and each
    # of its progress lines.
    started_at: float
    ended_at: float
    steps: list[Event]
    outcome: apply.ApplyOutcome | None
    error: str | None
    occupancy: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    measures: dict[str, float | None] = field(default_factory=dict)
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)


BEFORE, DURING, AFTER = "before the apply", "during the apply", "after"


async def _drill(plan: RolloutPlan, state: ClusterState, key: str | None,
                 progress: Progress) -> tuple[load.RunResult, float, float, list[Event],
                                              apply.ApplyOutcome | None, str | None,
                                              list[dict[str, Any]]]:
    stop, sampling = asyncio.Event(), asyncio.Event()
    workload = load.Workload(model=state.served_model_name, output_tokens=plan.output_tokens,
                             prompt_words=plan.prompt_words)
    loader = asyncio.create_task(load.run(state.gateway_url, workload, plan.arrivals,
                                          plan.limit_s, key, stop=stop))
    start = time.perf_counter()
    occupancy: list[dict[str, Any]] = []
    sampler = asyncio.create_task(sample_replicas(
        [r.url for r in state.replicas], "vllm:num_requests_running", "running", occupancy,
        start, sampling))
    steps: list[Event] = []

    def step(message: str) -> None:
        steps.append((time.perf_counter() - start, message))
        progress(message)

    outcome, error = None, None
    try:
        await asyncio.sleep(plan.before_s)
        started_at = time.perf_counter() - start
        try:
            outcome = await asyncio.to_thread(apply.apply, plan.to_spec, step)
        except ClusterError as exc:
            error = exc.message
            progress(f"the apply failed: {exc.message}")
        ended_at = time.perf_counter() - start
        await asyncio.sleep(plan.after_s)
    finally:
        stop.set()
        sampling.set()
    run = await loader
    await sampler
    return run, started_at, ended_at, steps, outcome, error, occupancy


def _fewest_in_rotation(run: load.RunResult, low: float, high: float) -> int | None:
    counts = [sum(1 for weight in s["weights"].values() if weight > 0)
              for s in run.weights if low <= s["t"] <= high and s["weights"]]
    return min(counts) if counts else None


def _windows(result: RolloutResult) -> dict[str, dict[str, Any]]:
    bounds = {BEFORE: (0.0, result.started_at), DURING: (result.started_at, result.ended_at),
              AFTER: (result.ended_at, float("inf"))}
    out: dict[str, dict[str, Any]] = {}
    for name, (low, high) in bounds.items():
        inside = [r for r in result.run.records if low <= r.start < high]
        ttfts = sorted(r.ttft for r in inside if r.ok and r.ttft is not None)
        out[name] = {
            "requests": len(inside), "failed": sum(1 for r in inside if not r.ok),
            "not_started": sum(1 for r in inside if not r.ok
                               and (r.error_phase or stats.HTTP_STATUS) in stats.NOT_STARTED),
            "mid_stream": sum(1 for r in inside if r.error_phase == stats.MID_STREAM),
            "ttft_p50_s": stats.percentile(ttfts, 50) if ttfts else None,
            "ttft_p99_s": stats.percentile(ttfts, 99) if ttfts else None,
        }
    return out


def _busy_share(occupancy: list[dict[str, Any]], slots: int, before: float) -> float | None:
    """Mean share of the fleet's batch slots running a request before the apply."""
    readings = [sum(s["running"]) for s in occupancy if s["t"] < before]
    return (sum(readings) / len(readings) / slots) if readings and slots else None


def run_rollout(spec: ClusterSpec, plan: RolloutPlan, key: str | None,
                progress: Progress) -> RolloutResult:
    _paths, state = running_cluster(spec)
    if plan.rate <= 0 and not plan.streams:
        raise SpecError("--load must be above 0 requests/s", hint="e.g. --load 10")
    change, *_ = apply.plan_apply(plan.to_spec)
    if change.refused or change.empty:
        raise SpecError(f"{plan.to_spec} gives the drill nothing to roll: "
                        + ("; ".join(change.refused) or "it is the running spec"),
                        hint="change a replica setting in it (`fleet apply --dry-run --spec "
                             "FILE` shows the plan)")
    progress(f"{plan.arrivals.describe()} through {state.gateway_url} for "
             f"{plan.before_s:g}s, then fleet apply --spec {plan.to_spec}")
    run, started_at, ended_at, steps, outcome, error, occupancy = asyncio.run(
        _drill(plan, state, key, progress))
    result = RolloutResult(plan=plan, engine=state.engine, replicas=len(state.replicas),
                           run=run, started_at=started_at, ended_at=ended_at, steps=steps,
                           outcome=outcome, error=error, occupancy=occupancy)
    result.summary = stats.summarize(run.records, run.duration_s, stats.Slo())
    result.windows = _windows(result)
    slots = sum(r.max_num_seqs or 0 for r in state.replicas)
    fewest = _fewest_in_rotation(run, started_at, ended_at)
    not_started = sum(w["not_started"] for w in result.windows.values())
    cut = sum(w["mid_stream"] for w in result.windows.values())
    rolls = outcome.rolls if outcome else []
    result.measures = {
        "failed_before_first_byte": float(not_started),
        "streams_cut": float(cut),
        "fewest_in_rotation": None if fewest is None else float(fewest),
        "slots_busy_before": _busy_share(occupancy, slots, started_at),
        "apply_s": ended_at - started_at,
        "seconds_per_replica": (sum(r.total_s for r in rolls) / len(rolls)) if rolls else None,
        "requests_cut_at_drain_timeout": float(sum(r.cut for r in rolls)),
    }
    floor = change.fewest_in_rotation()
    result.targets = [
        ("the apply completed", error or "yes", error is None),
        ("0 requests failed before their first byte", f"{not_started}", not_started == 0),
        ("0 streams cut", f"{cut}", cut == 0),
        (f"never fewer than {floor} of {result.replicas} replicas in rotation",
         "not seen" if fewest is None else f"{fewest}",
         None if fewest is None else fewest >= floor),
    ]
    return result
