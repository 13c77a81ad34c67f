"""`fleet bench scenario reloads`: what a gateway reload every few seconds
does to least_conn's balance and to clients, against no reloads at all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.bench import load, stats
from router.bench.fleets import Fleet
from router.bench.report import pyplot
from router.bench.scenario_kit import (
    REPLICA_SAMPLE_S,
    Context,
    Row,
    Scenario,
    ScenarioResult,
    ratio_text,
    s_text,
    sample_replicas,
    sim_text,
    window_summary,
)
from router.disk.paths import RuntimePaths
from router.runtime.gateway import signal_reload


@dataclass(frozen=True)
class ReloadSize:
    clients: int = 200
    every_s: float = 10.0
    warmup_s: float = 20.0
    measure_s: float = 120.0
    output_tokens: load.Range = (100, 200)


FULL = ReloadSize()
TINY = ReloadSize(clients=16, every_s=0.5, warmup_s=0.5, measure_s=2.0, output_tokens=(8, 16))


# Slow steps, so 200 long streams are a few thousand chunks a second (what a
# 2-core client can read), and a batch big enough that nothing queues: the
# running count per replica is then exactly where the gateway sent streams.
RELOAD_SIM: dict[str, Any] = {"decode_step_s": 0.1, "decode_s_per_seq": 0.0004,
                              "max_num_seqs": 128}


async def reload_every(paths: RuntimePaths, every_s: float, stop: asyncio.Event,
                        done: list[float], run_start: float) -> None:
    """SIGHUP the nginx master every ``every_s``: a reload of the same file
    still starts a new generation of workers, which is what is measured."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            signal_reload(paths)
            done.append(time.perf_counter() - run_start)


async def _streams(fleet: Fleet, workload: load.Workload, clients: int, seconds: float,
                   reload_every_s: float | None, samples: list[dict[str, Any]],
                   reloaded: list[float]) -> load.RunResult:
    """The closed loop of streams, with the running counts sampled and, when
    asked, nginx reloaded every ``reload_every_s``."""
    stop = asyncio.Event()
    start = time.perf_counter()
    helpers = [asyncio.create_task(sample_replicas(fleet.replica_urls, "vllm:num_requests_running",
                                                   "running", samples, start, stop))]
    if reload_every_s is not None:
        helpers.append(asyncio.create_task(reload_every(
            RuntimePaths(fleet.spec.runtime_dir), reload_every_s, stop, reloaded, start)))
    try:
        return await load.run(fleet.gateway_url, workload,
                              load.Arrivals("closed", concurrency=clients), seconds,
                              sample_weights=False)
    finally:
        stop.set()
        await asyncio.gather(*helpers)


def imbalance(samples: list[dict[str, Any]], after_s: float) -> dict[str, Any]:
    """max/min of the replicas' running requests per sample, after ``after_s``."""
    ratios = [max(s["running"]) / min(s["running"]) for s in samples
              if s["t"] >= after_s and s["running"] and min(s["running"]) > 0]
    empty = sum(1 for s in samples if s["t"] >= after_s and s["running"]
                and min(s["running"]) == 0)
    ratios.sort()
    return {"samples": len(ratios), "samples_with_an_idle_replica": empty,
            "mean": sum(ratios) / len(ratios) if ratios else None,
            "p50": stats.percentile(ratios, 50) if ratios else None,
            "p95": stats.percentile(ratios, 95) if ratios else None,
            "max": ratios[-1] if ratios else None}


def reloads(ctx: Context) -> ScenarioResult:
    size = ctx.pick(FULL, TINY)
    workload = load.Workload(model="sim-model", prompt_words=(32, 64),
                             output_tokens=size.output_tokens, seed=ctx.seed)
    total = size.warmup_s + size.measure_s
    rows: list[Row] = []
    for label, every in (("no reloads", None),
                         (f"a reload every {size.every_s:g} s", size.every_s)):
        with ctx.fleet(f"reloads/{'none' if every is None else 'every'}", 4,
                       {"defaults": RELOAD_SIM}, controller=False) as fleet:
            ctx.progress(f"reloads: {label}: {size.clients} streams for {total:g}s")
            samples: list[dict[str, Any]] = []
            reloaded: list[float] = []
            run = asyncio.run(_streams(fleet, workload, size.clients, total, every,
                                       samples, reloaded))
        summary = window_summary(run, size.warmup_s, size.measure_s)
        row = Row(label, summary=summary, run=run, measured_from_s=size.warmup_s)
        row.extra.update(imbalance=imbalance(samples, size.warmup_s),
                         reloads=len(reloaded), running_samples=samples)
        rows.append(row)
        spread = row.extra["imbalance"]
        ctx.progress(f"reloads: {label}: running max/min mean {ratio_text(spread['mean'])}, "
                     f"p95 {ratio_text(spread['p95'])}; E2E p99 "
                     f"{s_text(summary['e2e_s']['p99'])}")
    still, reloading = (r.extra["imbalance"] for r in rows)
    calm, busy = (r.summary for r in rows)
    assert calm is not None and busy is not None
    p99 = {m: (busy[m]["p99"] / calm[m]["p99"]) if busy[m]["p99"] and calm[m]["p99"] else None
           for m in ("ttft_s", "e2e_s")}
    result = ScenarioResult(
        name="reloads", title="What a reload every few seconds does to least_conn",
        setup=[f"4 simulated replicas ({sim_text(RELOAD_SIM)}): a batch large enough that "
               "nothing queues, so each replica's running count is where the gateway sent "
               "streams. Static least_conn; the controller is off in both runs, so the only "
               "difference is the reloads.",
               f"Load: a closed loop of {size.clients} clients, streamed completions "
               f"of {size.output_tokens[0]}-{size.output_tokens[1]} tokens "
               f"(long streams), {total:g} s per run; figures after a "
               f"{size.warmup_s:g} s warm-up.",
               f"With reloads: SIGHUP to the nginx master every {size.every_s:g} s "
               "(the same configuration: each reload starts a new generation of workers, "
               "as a weight change does).",
               f"Imbalance: every {REPLICA_SAMPLE_S:g} s, each replica's "
               "`vllm:num_requests_running`; the figure is max/min across the four."],
        rows=rows, timeline_row=-1)
    # The question is whether the reloads hurt clients: a P99 more than 5 %
    # worse would call for a mitigation.
    result.targets.append((
        f"P99 TTFT and E2E with a reload every {size.every_s:g} s within 5 % of "
        "without", f"{ratio_text(p99['ttft_s'])} x, {ratio_text(p99['e2e_s'])} x",
        all(v is not None and v <= 1.05 for v in p99.values())))
    result.notes.append(
        f"Running requests per replica, max/min: mean {ratio_text(reloading['mean'])} with "
        f"reloads against {ratio_text(still['mean'])} without (p95 "
        f"{ratio_text(reloading['p95'])} against {ratio_text(still['p95'])}).")
    result.notes.append(
        "Goodput is 0 in both rows by design of the load: these replicas take 0.1 s a step, "
        "above the goodput SLO's 100 ms per token; the long, slow streams are what keeps "
        "old workers busy across reloads.")
    return result


def _reloads_table(rows: list[Row]) -> list[str]:
    lines = ["", "### Running requests per replica, max/min", "",
             "| run | reloads | mean | p50 | p95 | max | samples | samples with an idle "
             "replica |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        spread = row.extra["imbalance"]
        lines.append(f"| {row.label} | {row.extra['reloads']} | {ratio_text(spread['mean'])} | "
                     f"{ratio_text(spread['p50'])} | {ratio_text(spread['p95'])} | "
                     f"{ratio_text(spread['max'])} | {spread['samples']} | "
                     f"{spread['samples_with_an_idle_replica']} |")
    return lines


def plot_imbalance(out: Path, rows: list[Row], filename: str = "imbalance.png") -> str:
    """Running max/min over time, one line per run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for row in rows:
        points = [(s["t"], max(s["running"]) / min(s["running"]))
                  for s in row.extra["running_samples"] if s["running"] and min(s["running"])]
        ax.plot([t for t, _ in points], [r for _, r in points], label=row.label, linewidth=1)
    ax.axvline(rows[0].measured_from_s, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("running requests, max/min")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / filename, dpi=110)
    plt.close(fig)
    return filename


SCENARIOS = (Scenario("reloads", reloads, tables=_reloads_table,
                      plots=lambda out, rows: [plot_imbalance(out, rows)] if rows else []),)
