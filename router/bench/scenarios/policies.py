"""`fleet bench scenario heterogeneous` and `homogeneous`: the balancing
policies side by side on four replicas, one of them at a third of the speed
or all equal, under Poisson load at 85 % of the fleet's measured capacity.
"""

from __future__ import annotations

import contextlib
from typing import Any

from router.bench import fleets, load
from router.bench.fleets import Endpoint
from router.bench.scenario_kit import (
    LOAD_SHARE,
    POLICY_SIM,
    Context,
    Policy,
    Row,
    Scenario,
    ScenarioResult,
    calibrate,
    peer_rows,
    run_load,
    s_text,
    sim_text,
    summary_by_label,
    weight_changes,
    window_summary,
)

SLOW_SPEED = 0.33
POLICIES = (
    Policy("round-robin", "round-robin (nginx)", balance="round_robin"),
    Policy("least_conn", "least_conn, static weights (nginx)"),
    Policy("adaptive", "llm-fleet adaptive", controller=True),
    Policy("power_of_two", "vllm-router power_of_two", router_policy="power_of_two"),
    Policy("cache_aware", "vllm-router cache_aware", router_policy="cache_aware"),
)
CONTENDERS = tuple(p.key for p in POLICIES)


def policies(ctx: Context, heterogeneous: bool) -> ScenarioResult:
    size = ctx.size
    name = "heterogeneous" if heterogeneous else "homogeneous"
    sim: dict[str, Any] = {"defaults": POLICY_SIM}
    if heterogeneous:
        sim["replicas"] = [{}, {}, {}, {"speed": SLOW_SPEED}]
    workload = load.Workload(model="sim-model", prompt_words=(32, 256),
                             output_tokens=size.output_tokens, seed=ctx.seed)
    missing = peer_rows([p.label for p in POLICIES])
    rows: list[Row] = []
    rate = 0.0
    per_replica: list[float] = []
    chosen = [p for p in POLICIES if not ctx.contenders or p.key in ctx.contenders]
    for policy in chosen:
        if missing.get(policy.label):
            rows.append(Row(policy.label, skipped=missing[policy.label]))
            ctx.progress(f"{name}: {policy.label} skipped: {missing[policy.label]}")
            continue
        folder = policy.label.split(" ")[0].replace(",", "")
        with ctx.fleet(f"{name}/{folder}-{len(rows)}", 4, sim, balance=policy.balance,
                       controller=policy.controller) as fleet:
            if not rate:
                capacity, per_replica = calibrate(fleet, workload, size.calibrate_s)
                rate = round(LOAD_SHARE * capacity, 1)
                ctx.progress(f"{name}: capacity {capacity:.1f} req/s "
                             f"({', '.join(f'{c:.1f}' for c in per_replica)}); "
                             f"load {rate:g} req/s")
            opener: contextlib.AbstractContextManager[Endpoint] = (
                fleets.vllm_router(fleet.replica_urls, policy.router_policy,
                                   ctx.work_dir / name)
                if policy.router_policy else contextlib.nullcontext(Endpoint(fleet.gateway_url)))
            with opener as endpoint:
                total = size.warmup_s + size.measure_s
                ctx.progress(f"{name}: {policy.label}: Poisson {rate:g} req/s for {total:g}s "
                             f"(first {size.warmup_s:g}s warm-up)")
                run = run_load(endpoint, workload, load.Arrivals("poisson", rate=rate), total,
                               sample_weights=policy.router_policy is None)
            summary = window_summary(run, size.warmup_s, size.measure_s)
            row = Row(policy.label, summary=summary, run=run, measured_from_s=size.warmup_s)
            if policy.controller:
                row.extra["weight_changes"] = weight_changes(run.weights, size.warmup_s)
            rows.append(row)
            ctx.progress(f"{name}: {policy.label}: E2E p99 {s_text(summary['e2e_s']['p99'])}, "
                         f"{summary['request_throughput']:.1f} req/s, "
                         f"{summary['failed']} failed")
    result = ScenarioResult(
        name=name,
        title=("One replica at a third of the speed" if heterogeneous
               else "Four equal replicas"),
        setup=[f"4 simulated replicas ({sim_text(POLICY_SIM)})"
               + (f"; replica-3 runs at speed {SLOW_SPEED:g}" if heterogeneous else "") + ".",
               f"Capacity measured first: each replica driven directly with "
               f"{POLICY_SIM['max_num_seqs']} concurrent clients for {size.calibrate_s:g} s, "
               "all four at once: " + ", ".join(f"{c:.1f}" for c in per_replica)
               + f" requests/s, {sum(per_replica):.1f} in all.",
               f"Load: streamed chat, 32-256 prompt words, {size.output_tokens[0]}-"
               f"{size.output_tokens[1]} output tokens, Poisson arrivals at {rate:g} "
               f"requests/s ({LOAD_SHARE:.0%} of capacity) for "
               f"{size.warmup_s + size.measure_s:g} s; "
               + (f"figures are over the requests that started after a {size.warmup_s:g} s "
                  "warm-up." if size.warmup_s else "figures are over every request, from the "
                  "first second (no warm-up left out)."),
               "Each row is a fresh fleet from the same spec; only the balancing differs. "
               "Goodput counts requests with TTFT <= 2 s and TPOT <= 100 ms."],
        rows=rows)
    result.timeline_row = next((i for i, r in enumerate(rows) if r.label == "llm-fleet adaptive"
                                and r.summary), -1)
    _policy_targets(result, heterogeneous)
    return result


def _policy_targets(result: ScenarioResult, heterogeneous: bool) -> None:
    adaptive = summary_by_label(result.rows, "llm-fleet adaptive")
    least = summary_by_label(result.rows, "least_conn")
    robin = summary_by_label(result.rows, "round-robin")
    if adaptive is None or least is None:
        return
    e2e = adaptive["e2e_s"]["p99"]
    if heterogeneous:
        bases = [(least, 0.6, "static least_conn")] + (
            [(robin, 0.4, "round-robin")] if robin is not None else [])
        for base, limit, label in bases:
            ratio = e2e / base["e2e_s"]["p99"] if e2e and base["e2e_s"]["p99"] else None
            result.targets.append((f"adaptive P99 E2E <= {limit:g} x {label}",
                                   "–" if ratio is None else f"{ratio:.2f} x",
                                   ratio is not None and ratio <= limit))
        thr = adaptive["request_throughput"] / least["request_throughput"]
        result.targets.append(("adaptive throughput within 2 % of least_conn",
                               f"{thr - 1:+.1%}", abs(thr - 1) <= 0.02))
        return
    changes = next((r.extra["weight_changes"] for r in result.rows
                    if "weight_changes" in r.extra), None)
    if changes is not None:
        result.targets.append(("adaptive: zero weight reloads after warm-up",
                               f"{changes}", changes == 0))
    for metric, label in (("ttft_s", "P99 TTFT"), ("e2e_s", "P99 E2E")):
        a, b = adaptive[metric]["p99"], least[metric]["p99"]
        ratio = a / b if a and b else None
        result.targets.append((f"adaptive {label} within 5 % of least_conn",
                               "–" if ratio is None else f"{ratio - 1:+.1%}",
                               ratio is not None and ratio <= 1.05))
    for metric, label in (("request_throughput", "throughput"), ("goodput", "goodput")):
        ratio = adaptive[metric] / least[metric] if least[metric] else None
        result.targets.append((f"adaptive {label} within 5 % of least_conn",
                               "–" if ratio is None else f"{ratio - 1:+.1%}",
                               ratio is not None and ratio >= 0.95))


SCENARIOS = (
    Scenario("heterogeneous", lambda ctx: policies(ctx, heterogeneous=True), CONTENDERS),
    Scenario("homogeneous", lambda ctx: policies(ctx, heterogeneous=False), CONTENDERS),
)
