"""`fleet bench scenario overhead`: what a gateway adds to every request.

One simulated replica that answers almost at once, reached directly and
through each gateway (llm-fleet's nginx, vllm-router, LiteLLM's proxy):
added latency at low load, then the highest rate each sustains.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from router.bench import fleets, load, stats
from router.bench.fleets import Endpoint
from router.bench.scenario_kit import (
    Context,
    Row,
    Scenario,
    ScenarioResult,
    ms_text,
    peer_rows,
    run_load,
    s_text,
    sim_text,
    tenant_keys,
)
from router.bench.scenario_report import ms_cell

# adds is not lost in the replica's own jitter.
OVERHEAD_SIM: dict[str, Any] = {"decode_step_s": 0.002, "decode_s_per_seq": 0.00002,
                                "max_num_seqs": 512}
OVERHEAD_ROUNDS = 10
OVERHEAD_WARMUP_S = 1.0
# The second llm-fleet row: a gateway with every overload control on, none
# of them acting (the fleet is far from full), so what it adds is their cost
# on every request: the key check, the class map and body.js's body rewrite
# (the class, and the stream's usage request), the shed flag's stat, the
# fair-share read and its limit_conn zones, the budget flags' stats and
# usage.js reading every buffer of the answer for its tokens.
CONTROLS = "llm-fleet, overload controls on"
# Its fleet's replica reached directly: what the controls row is measured
# against (two sim processes on one machine do not answer alike).
CONTROLS_DIRECT = "direct, second fleet"
CONTROLS_SPEC: dict[str, Any] = {
    "auth": {"enabled": True},
    "priority": {"enabled": True, "max_in_flight": {"batch": 10_000},
                 "shed_queue_wait_s": {"batch": 30}, "fair_share": True},
    # A budget the key never comes near: counted, never refused.
    "budgets": {"enabled": True, "tokens_per_min": 10**12},
}


@dataclass(frozen=True)
class OverheadSize:
    rate: float = 20.0
    seconds: float = 30.0
    capacity_rates: tuple[float, ...] = (25, 50, 100, 200, 400, 800, 1200, 1600)
    capacity_level_s: float = 5.0


FULL = OverheadSize()
TINY = OverheadSize(rate=10.0, seconds=2.0, capacity_rates=(20.0, 40.0), capacity_level_s=1.0)


def overhead(ctx: Context) -> ScenarioResult:
    size = ctx.pick(FULL, TINY)
    latency_load = load.Workload(model="sim-model", prompt_words=(16, 16),
                                 output_tokens=(16, 16), seed=ctx.seed)
    capacity_load = replace(latency_load, stream=False)
    labels = ["direct", "llm-fleet (nginx)", CONTROLS_DIRECT, CONTROLS, "vllm-router",
              "LiteLLM proxy"]
    missing = peer_rows(labels)
    slice_s = size.seconds / OVERHEAD_ROUNDS
    controlled_spec, controlled_path = ctx.fleet_spec("overhead-controls", 1,
                                                      {"defaults": OVERHEAD_SIM}, **CONTROLS_SPEC)
    key = tenant_keys(Path(controlled_spec["runtime_dir"]), {"client": None})["client"]
    with ctx.fleet("overhead", 1, {"defaults": OVERHEAD_SIM}) as fleet, \
            fleets.running_fleet(controlled_spec, controlled_path, lambda _msg: None) as \
            controlled, contextlib.ExitStack() as peers:
        work = ctx.work_dir / "overhead"
        endpoints = {"direct": Endpoint(fleet.replica_urls[0]),
                     "llm-fleet (nginx)": Endpoint(fleet.gateway_url),
                     CONTROLS_DIRECT: Endpoint(controlled.replica_urls[0]),
                     CONTROLS: Endpoint(controlled.gateway_url, key)}
        if not missing["vllm-router"]:
            endpoints["vllm-router"] = peers.enter_context(
                fleets.vllm_router(fleet.replica_urls, "round_robin", work))
        if not missing["LiteLLM proxy"]:
            endpoints["LiteLLM proxy"] = peers.enter_context(
                fleets.litellm_proxy(fleet.replica_urls, "sim-model", work))
        for label, why in missing.items():
            if why:
                ctx.progress(f"overhead: {label} skipped: {why}")
        # Slices in turn, so drift on the shared machine (Prometheus
        # compacting, a page cache flush) lands on every contender alike.
        slices: dict[str, list[load.RunResult]] = {label: [] for label in endpoints}
        for endpoint in endpoints.values():
            run_load(endpoint, latency_load, load.Arrivals("poisson", rate=size.rate),
                     OVERHEAD_WARMUP_S)
        ctx.progress(f"overhead: latency, {OVERHEAD_ROUNDS} rounds of {slice_s:g}s per "
                     f"contender at {size.rate:g} req/s")
        for index in range(OVERHEAD_ROUNDS):
            for label, endpoint in endpoints.items():
                run = run_load(endpoint, replace(latency_load, seed=ctx.seed + index),
                               load.Arrivals("poisson", rate=size.rate), slice_s)
                slices[label].append(run)
        rows = []
        for label in labels:
            if label not in endpoints:
                rows.append(Row(label, skipped=missing[label]))
                continue
            run = _joined(slices[label])
            summary = stats.summarize(run.records, run.duration_s, stats.Slo())
            row = Row(label, summary=summary, run=run)
            row.extra["capacity"] = _capacity_sweep(ctx, size, endpoints[label], capacity_load,
                                                      label)
            rows.append(row)
    direct, second = rows[0].summary, rows[2].summary
    assert direct is not None and second is not None
    targets: list[tuple[str, str, bool | None]] = []
    for row in rows[1:]:
        if row.summary is None or row.label == CONTROLS_DIRECT:
            continue
        base = second if row.label == CONTROLS else direct
        added = {q: _added(row.summary, base, "e2e_s", q) for q in ("p50", "p99")}
        row.extra["added_e2e_s"] = added
        if row.label.startswith("llm-fleet"):
            which = " with the overload controls on" if row.label == CONTROLS else ""
            targets.append((f"gateway{which} adds under 1 ms at p50", ms_text(added["p50"]),
                            added["p50"] is not None and added["p50"] < 0.001))
            targets.append((f"gateway{which} adds under 5 ms at p99", ms_text(added["p99"]),
                            added["p99"] is not None and added["p99"] < 0.005))
    return ScenarioResult(
        name="overhead", title="What a gateway adds to every request",
        setup=[f"One simulated replica ({sim_text(OVERHEAD_SIM)}), reached directly and "
               "through each gateway.",
               f"Latency: streamed chat requests, 16 prompt words, 16 output tokens, Poisson "
               f"arrivals at {size.rate:g} requests/s, {size.seconds:g} s per "
               f"contender, run as {OVERHEAD_ROUNDS} rounds of {slice_s:g} s slices taken in "
               "turn (after a discarded warm-up second each), so the contenders share any "
               "drift of the machine. Added latency is the contender's percentile minus "
               "direct's; the replica's own step jitter is about 1 ms, so differences "
               "below that are noise.",
               "Capacity: the same requests non-streamed, Poisson at "
               + ", ".join(f"{r:g}" for r in size.capacity_rates)
               + f" requests/s for {size.capacity_level_s:g} s each, stopping at the first "
               "level that fails. Sustained: no failed request and p99 E2E under 1 s (a "
               "gateway that falls behind queues, and its p99 grows past that at once).",
               f"{CONTROLS}: a second fleet of one such replica, its gateway with API keys, "
               "priority classes, a batch cap, shedding for the queue wait, fair shares "
               "per key and token budgets on (none acting: the fleet is far from full and "
               "the key's budget far away), reached with a key; "
               "its added latency is against its own replica reached directly "
               f"({CONTROLS_DIRECT}).",
               "vllm-router runs its round_robin policy (one worker); LiteLLM its default "
               "simple-shuffle router with one worker process, authenticated with a master "
               "key (it refuses to start without one)."],
        rows=rows, targets=targets)


def _joined(runs: list[load.RunResult]) -> load.RunResult:
    """Slices of one contender's load as one run: records pooled, the worst
    slice's send lag, the client's CPU share averaged over time."""
    wall = sum(r.duration_s for r in runs)
    lags = [r.send_lag_p99_s for r in runs if r.send_lag_p99_s is not None]
    return load.RunResult(
        records=[record for r in runs for record in r.records], duration_s=wall,
        send_lag_p99_s=max(lags) if lags else None, dropped=sum(r.dropped for r in runs),
        client_cpu_share=sum(r.client_cpu_share * r.duration_s for r in runs) / wall)


def _capacity_sweep(ctx: Context, size: OverheadSize, endpoint: Endpoint,
                    workload: load.Workload, label: str) -> dict[str, Any]:
    levels = []
    sustained = 0.0
    for rate in size.capacity_rates:
        run = run_load(endpoint, workload, load.Arrivals("poisson", rate=rate),
                       size.capacity_level_s)
        summary = stats.summarize(run.records, run.duration_s, stats.Slo())
        served = summary["succeeded"] / run.duration_s
        p99 = summary["e2e_s"]["p99"]
        client_bound = run.client_bound(load.Arrivals("poisson", rate=rate))
        ok = summary["failed"] == 0 and p99 is not None and p99 < 1.0 and not client_bound
        levels.append({"rate": rate, "served": served, "failed": summary["failed"],
                       "e2e_p99_s": p99, "sustained": ok, "client_bound": client_bound})
        verdict = "sustained" if ok else "not sustained" + (" (client-bound)" if client_bound
                                                            else "")
        ctx.progress(f"overhead: {label}: {rate:g} req/s offered, {served:,.0f} served, "
                     f"{summary['failed']} failed, p99 {s_text(p99)} -> {verdict}")
        if not ok:
            break
        sustained = rate
    return {"sustained_rate": sustained, "levels": levels}


def _added(row: dict[str, Any], base: dict[str, Any], metric: str, q: str) -> float | None:
    a, b = row[metric][q], base[metric][q]
    return None if a is None or b is None else a - b


def _overhead_tables(rows: list[Row]) -> list[str]:
    lines = ["", "### Added latency and capacity", "",
             "| contender | added E2E p50 (ms) | added E2E p99 (ms) | highest rate sustained "
             "(req/s) | levels |", "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        if row.summary is None:
            continue
        added = row.extra.get("added_e2e_s", {})
        capacity = row.extra["capacity"]
        levels = "; ".join(
            f"{lv['rate']:g}: {lv['served']:,.0f} served, {lv['failed']} failed, p99 "
            f"{ms_cell(lv['e2e_p99_s'])} ms" + (" (client-bound)" if lv["client_bound"] else "")
            for lv in capacity["levels"])
        lines.append(f"| {row.label} | {_signedms_cell(added.get('p50'))} | "
                     f"{_signedms_cell(added.get('p99'))} | {capacity['sustained_rate']:g} | "
                     f"{levels} |")
    return lines


def _signedms_cell(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:+.2f}"


SCENARIOS = (Scenario("overhead", overhead, tables=_overhead_tables),)
