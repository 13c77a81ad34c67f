"""`fleet bench scenario scaling`: throughput through the gateway against N
times one replica driven directly, at 1, 2, 4 and 8 replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.bench import load, stats
from router.bench.fleets import Endpoint
from router.bench.scenario_kit import (
    POLICY_SIM,
    Context,
    Row,
    Scenario,
    ScenarioResult,
    run_load,
    sim_text,
)


@dataclass(frozen=True)
class ScalingSize:
    replicas: tuple[int, ...] = (1, 2, 4, 8)
    seconds: float = 45.0


FULL = ScalingSize()
TINY = ScalingSize(replicas=(1, 2), seconds=2.0)


def scaling(ctx: Context) -> ScenarioResult:
    size = ctx.size
    own = ctx.pick(FULL, TINY)
    seqs = int(POLICY_SIM["max_num_seqs"])
    # Non-streamed, so at 8 replicas the 2-core client and nginx move requests,
    # not tens of thousands of stream chunks a second. Each replica gets half
    # again its batch in clients, so it is always full and queues a little.
    workload = load.Workload(model="sim-model", stream=False, prompt_words=(32, 32),
                             output_tokens=size.output_tokens, seed=ctx.seed)
    per_replica_clients = seqs + seqs // 2
    # Throughput counts requests completed inside a steady window: not the
    # first third, while every client's first request is still in its first
    # batch, and not the drain after the last request was sent.
    steady_from = own.seconds / 3

    def measure(endpoint: Endpoint, clients: int) -> tuple[load.RunResult, dict[str, Any]]:
        run = run_load(endpoint, workload, load.Arrivals("closed", concurrency=clients),
                       own.seconds)
        done = [r for r in run.records
                if r.e2e is not None and steady_from <= r.start + r.e2e < own.seconds]
        return run, stats.summarize(done, own.seconds - steady_from, stats.Slo())

    rows: list[Row] = []
    single = 0.0
    for replicas in own.replicas:
        with ctx.fleet(f"scaling/{replicas}", replicas, {"defaults": POLICY_SIM}) as fleet:
            if not single:
                ctx.progress(f"scaling: one replica direct, {per_replica_clients} clients")
                run, summary = measure(Endpoint(fleet.replica_urls[0]), per_replica_clients)
                single = summary["request_throughput"]
                rows.append(Row("1 replica, direct", summary=summary, run=run,
                                extra={"replicas": 1, "ideal": single, "ratio": 1.0}))
            clients = replicas * per_replica_clients
            ctx.progress(f"scaling: {replicas} replica(s) through the gateway, {clients} clients")
            run, summary = measure(Endpoint(fleet.gateway_url), clients)
            ideal = replicas * single
            rows.append(Row(f"{replicas} replica(s), gateway", summary=summary, run=run,
                            extra={"replicas": replicas, "ideal": ideal,
                                   "ratio": summary["request_throughput"] / ideal}))
    worst = min((r for r in rows[1:]), key=lambda r: r.extra["ratio"])
    return ScenarioResult(
        name="scaling", title="Throughput against N x one replica",
        setup=[f"Simulated replicas ({sim_text(POLICY_SIM)}), llm-fleet's default spec "
               "(adaptive controller on).",
               f"Closed loop of {per_replica_clients} clients per replica (the batch of "
               f"{seqs} plus half again, so every replica stays full), non-streamed chat, "
               f"32 prompt words, {size.output_tokens[0]}-{size.output_tokens[1]} output "
               f"tokens, {own.seconds:g} s per fleet size; throughput and latency count "
               f"the requests that completed between {steady_from:g} s and "
               f"{own.seconds:g} s, the steady part of the run.",
               "The ideal for N replicas is N times one replica driven directly."],
        rows=rows,
        targets=[("at least 0.97 x N x one replica, at every N",
                  f"lowest {worst.extra['ratio']:.3f} x at N = {worst.extra['replicas']}",
                  worst.extra["ratio"] >= 0.97)])


def _scaling_table(rows: list[Row]) -> list[str]:
    lines = ["", "### Scaling", "",
             "| fleet | req/s | N x one replica | ratio |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        assert row.summary is not None
        lines.append(f"| {row.label} | {row.summary['request_throughput']:,.1f} | "
                     f"{row.extra['ideal']:,.1f} | {row.extra['ratio']:.3f} |")
    return lines


SCENARIOS = (Scenario("scaling", scaling, tables=_scaling_table),)
