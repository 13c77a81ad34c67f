"""`fleet bench scenario overload`: an interactive tenant beside a batch tenant
that floods the fleet, with priority classes off (every replica admits in
arrival order, today's default) and on (the gateway writes each key's class
into the body; replicas admit the interactive class first).

Two simulated replicas of 8 sequences each, API keys on: an "interactive" key
at a steady 1 request/s of short answers, a "batch" key at 0, 1, 2 and 4
times the fleet's measured capacity for its long answers, then 10 s with the
flood stopped. What the interactive tenant sees is the figure: TTFT during
the flood against its TTFT alone, and how soon after the flood it is back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.bench import fleets, load, stats
from router.bench.fleets import Endpoint
from router.bench.report import pyplot
from router.bench.scenario_kit import (
    Context,
    Row,
    Scenario,
    ScenarioResult,
    sim_text,
    tenant_keys,
    whole_ms,
)
from router.bench.stats import RequestRecord, percentile

# A replica of the measurements: 8 sequences, a GPU-like step time.
OVERLOAD_SIM: dict[str, Any] = {"decode_step_s": 0.02, "decode_s_per_seq": 0.0004,
                                "max_num_seqs": 8}
REPLICAS = 2
INTERACTIVE_RATE = 1.0
SLOTS = REPLICAS * int(OVERLOAD_SIM["max_num_seqs"])
# The "reserved" contender's cap on the batch class: the rest of the slots
# stay free for interactive requests (priority.max_in_flight).
BATCH_CAP = SLOTS - 4
# The "shed" contender's limit on the fleet's queue wait for the batch class
# (priority.shed_queue_wait_s): past it, batch is answered 503 with Retry-After.
SHED_WAIT_S = 5.0
CONTENDERS = {"fcfs": "classes off (arrival order)", "classes": "priority classes",
              "reserved": f"classes, batch capped at {BATCH_CAP} of {SLOTS} slots",
              "shed": f"classes, batch shed past a {SHED_WAIT_S:g} s queue wait"}
# What the gateway answers a request it sheds: a cap, or the fleet's saturation.
SHED_STATUSES = (429, 503)
# "Back to normal": an interactive request's TTFT within this factor of its
# p50 with no flood.
RECOVERED_WITHIN = 1.5


@dataclass(frozen=True)
class OverloadSize:
    flood_s: float = 30.0
    after_s: float = 10.0
    floods: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    interactive_tokens: int = 32
    batch_tokens: int = 256


FULL = OverloadSize()
TINY = OverloadSize(flood_s=4.0, after_s=1.0, floods=(0.0, 2.0), interactive_tokens=8,
                    batch_tokens=16)


def measure_capacity(replica_urls: list[str], workload: load.Workload, seconds: float,
                     seqs: int = int(OVERLOAD_SIM["max_num_seqs"])) -> float:
    """Batch requests/s the fleet completes with every replica's batch full
    (``seqs`` each), each replica driven directly."""

    async def all_at_once() -> list[load.RunResult]:
        return list(await asyncio.gather(*(
            load.run(url, workload, load.Arrivals("closed", concurrency=seqs), seconds,
                     sample_weights=False) for url in replica_urls)))

    return sum(sum(1 for r in run.records if r.ok) / run.duration_s
               for run in asyncio.run(all_at_once()))


def run_cell(gateway: str, keys: dict[str, str], interactive: load.Workload,
          batch: load.Workload, batch_rate: float, own: OverloadSize
          ) -> tuple[load.RunResult, load.RunResult | None]:
    async def both() -> tuple[load.RunResult, load.RunResult | None]:
        tenant = load.run(gateway, interactive, load.Arrivals("poisson", rate=INTERACTIVE_RATE),
                          own.flood_s + own.after_s, keys["interactive"], sample_weights=False)
        if not batch_rate:
            return await tenant, None
        flood = load.run(gateway, batch, load.Arrivals("poisson", rate=batch_rate),
                         own.flood_s, keys["batch"], sample_weights=False)
        first, second = await asyncio.gather(tenant, flood)
        return first, second

    return asyncio.run(both())


def recovery_s(records: list[RequestRecord], flood_s: float, normal_ttft: float) -> float | None:
    """Seconds after the flood stopped until an interactive request's TTFT was
    back within RECOVERED_WITHIN x its no-flood p50 and stayed there."""
    after = sorted((r for r in records if r.start >= flood_s), key=lambda r: r.start)
    recovered = None
    for record in after:
        normal = record.ttft is not None and record.ttft <= RECOVERED_WITHIN * normal_ttft
        if normal and recovered is None:
            recovered = record.start + (record.ttft or 0.0) - flood_s
        elif not normal:
            recovered = None
    return recovered


def interactive_summary(run: load.RunResult, flood_s: float) -> dict[str, Any]:
    during = [r for r in run.records if r.start < flood_s]
    return stats.summarize(during, flood_s, stats.Slo())


def _priority(contender: str) -> dict[str, Any]:
    if contender == "fcfs":
        return {"enabled": False}
    caps = {"batch": BATCH_CAP} if contender == "reserved" else {}
    waits = {"batch": SHED_WAIT_S} if contender == "shed" else {}
    return {"enabled": True, "max_in_flight": caps, "shed_queue_wait_s": waits}


def overload(ctx: Context) -> ScenarioResult:
    own = ctx.pick(FULL, TINY)
    interactive = load.Workload(model="sim-model", prompt_words=(32, 32),
                                output_tokens=(own.interactive_tokens,) * 2, seed=ctx.seed)
    batch = load.Workload(model="sim-model", prompt_words=(64, 64),
                          output_tokens=(own.batch_tokens,) * 2, seed=ctx.seed + 1)
    chosen = [key for key in CONTENDERS if not ctx.contenders or key in ctx.contenders]
    rows: list[Row] = []
    capacity = 0.0
    for contender in chosen:
        data, path = ctx.fleet_spec(f"overload/{contender}", REPLICAS, {"defaults": OVERLOAD_SIM},
                                    auth={"enabled": True},
                                    priority=_priority(contender))
        keys = tenant_keys(Path(data["runtime_dir"]),
                           {"interactive": "interactive", "batch": "batch"})
        ctx.progress(f"overload/{contender}: fleet up ({REPLICAS} simulated replicas)")
        with fleets.running_fleet(data, path, lambda _msg: None) as fleet:
            if not capacity:
                ctx.progress("overload: the fleet's capacity for batch requests, "
                             "each replica driven directly")
                capacity = measure_capacity(fleet.replica_urls, batch, ctx.size.calibrate_s)
            alone_p50: float | None = None
            for multiple in own.floods:
                rate = multiple * capacity
                cell = (f"{CONTENDERS[contender]}, "
                        + (f"batch at {multiple:g}x capacity" if multiple else "no flood"))
                ctx.progress(f"overload: {cell}")
                tenant, flood = run_cell(Endpoint(fleet.gateway_url).url, keys, interactive,
                                      batch, rate, own)
                summary = interactive_summary(tenant, own.flood_s)
                if not multiple:
                    alone_p50 = summary["ttft_s"]["p50"]
                recovery = (None if not multiple or alone_p50 is None
                            else recovery_s(tenant.records, own.flood_s, alone_p50))
                rows.append(Row(f"{cell}: interactive", summary=summary, run=tenant, extra={
                    "contender": contender, "multiple": multiple, "tenant": "interactive",
                    "alone_ttft_p50_s": alone_p50, "recovery_s": recovery}))
                if flood is not None:
                    rows.append(Row(f"{cell}: batch", run=flood, extra={
                        "contender": contender, "multiple": multiple, "tenant": "batch",
                        "rate": rate},
                        summary=stats.summarize(flood.records, flood.duration_s, stats.Slo())))
    return ScenarioResult(
        name="overload", title="An interactive tenant beside a batch flood",
        setup=[f"{REPLICAS} simulated replicas ({sim_text(OVERLOAD_SIM)}), auth on, the "
               "controller on with its defaults; a fresh fleet per contender.",
               f"Capacity measured first: each replica driven directly with a full batch of "
               f"batch requests for {ctx.size.calibrate_s:g} s: {capacity:.2f} requests/s "
               "for the fleet.",
               f"interactive key (class interactive): Poisson {INTERACTIVE_RATE:g} request/s, "
               f"32 prompt words, {own.interactive_tokens} tokens out, streamed, for "
               f"{own.flood_s:g} s + {own.after_s:g} s.",
               f"batch key (class batch): Poisson at "
               f"{', '.join(f'{m:g}' for m in own.floods if m)} x that capacity, 64 prompt "
               f"words, {own.batch_tokens} tokens out, streamed, for {own.flood_s:g} s, then "
               "stopped; every request it sent is waited for.",
               "Contenders: priority.enabled false (each replica admits in arrival order); "
               "true (the gateway writes the key's class into each body; replicas admit "
               "the lowest priority first, running requests are not preempted); and true "
               f"with priority.max_in_flight {{batch: {BATCH_CAP}}} (past {BATCH_CAP} batch "
               f"requests in flight the gateway answers 429 with Retry-After, so "
               f"{SLOTS - BATCH_CAP} of the {SLOTS} slots stay free for interactive ones); "
               f"and true with priority.shed_queue_wait_s {{batch: {SHED_WAIT_S:g}}} (while "
               "the fleet's queue wait, read by the controller from Prometheus, is above "
               f"{SHED_WAIT_S:g} s, the gateway answers batch 503 with a Retry-After of the "
               "drain time the controller measured).",
               "The interactive rows count the requests sent while the flood ran; "
               f"recovery is when, after the flood stopped, an interactive TTFT was back "
               f"within {RECOVERED_WITHIN:g} x its no-flood p50 and stayed there."],
        rows=rows, targets=_targets(rows, own))


def _targets(rows: list[Row], own: OverloadSize) -> list[tuple[str, str, bool | None]]:
    worst = max(own.floods)
    targets: list[tuple[str, str, bool | None]] = []
    for contender, label in CONTENDERS.items():
        flooded = _interactive(rows, contender, worst)
        if flooded is None:
            continue
        before, during = _ttft_p99(_interactive(rows, contender, 0.0)), _ttft_p99(flooded)
        if before and during is not None:
            targets.append((f"{label}: interactive TTFT p99 under a {worst:g}x batch flood "
                            "<= 1.5x its value with no flood",
                            f"{during / before:.1f}x ({whole_ms(during)} against "
                            f"{whole_ms(before)})",
                            during <= 1.5 * before))
        shed = [s for r in rows if r.extra.get("tenant") == "batch"
                and r.extra["contender"] == contender for s in _shed(r)]
        if shed:
            slowest = max(shed)
            targets.append((f"{label}: every shed request answered in <= 50 ms",
                            f"{len(shed)} shed, the slowest in {whole_ms(slowest)}",
                            slowest <= 0.05))
        base = _batch_throughput(rows, contender, 1.0)
        for multiple in (m for m in own.floods if m > 1.0):
            over = _batch_throughput(rows, contender, multiple)
            if base and over is not None:
                targets.append((f"{label}: batch requests completed per second at a "
                                f"{multiple:g}x flood >= 0.95x at 1x (no collapse)",
                                f"{over / base:.2f}x ({over:.2f} against {base:.2f})",
                                over >= 0.95 * base))
        recovery = flooded.extra["recovery_s"]
        targets.append((f"{label}: interactive TTFT back to normal within 5 s of the flood "
                        "stopping",
                        "not within the run" if recovery is None else f"{recovery:.1f} s",
                        recovery is not None and recovery <= 5.0))
    return targets


def _batch(rows: list[Row], contender: str, multiple: float) -> Row | None:
    return next((r for r in rows if r.extra.get("tenant") == "batch"
                 and r.extra["contender"] == contender and r.extra["multiple"] == multiple
                 and r.summary), None)


def _batch_throughput(rows: list[Row], contender: str, multiple: float) -> float | None:
    row = _batch(rows, contender, multiple)
    return None if row is None or row.summary is None else row.summary["request_throughput"]


def _interactive(rows: list[Row], contender: str, multiple: float) -> Row | None:
    return next((r for r in rows if r.extra.get("tenant") == "interactive"
                 and r.extra["contender"] == contender and r.extra["multiple"] == multiple
                 and r.summary), None)


def _shed(row: Row | None) -> list[float]:
    """How long each of a row's sheds (429, 503) took to arrive."""
    return [r.refused_in for r in _shed_records(row) if r.refused_in is not None]


def _shed_records(row: Row | None) -> list[RequestRecord]:
    if row is None or row.run is None:
        return []
    return [r for r in row.run.records if r.status in SHED_STATUSES]


def _retry_after_text(records: list[RequestRecord]) -> str:
    seconds = sorted(r.retry_after for r in records if r.retry_after is not None)
    if not seconds:
        return "–"
    low, high = seconds[0], seconds[-1]
    return f"{low:g} s" if low == high else f"{low:g}-{high:g} s"


def _ttft_p99(row: Row | None) -> float | None:
    return None if row is None or row.summary is None else row.summary["ttft_s"]["p99"]


def _overload_table(rows: list[Row]) -> list[str]:
    lines = ["", "### The interactive tenant", "",
             "| contender | batch flood | interactive TTFT p50 / p99 | p99 against no flood | "
             "back to normal after the flood | batch completed, req/s | batch shed (429/503) "
             "| shed answered in, p99 | Retry-After |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if row.extra.get("tenant") != "interactive" or row.summary is None:
            continue
        contender, multiple = row.extra["contender"], row.extra["multiple"]
        alone = _ttft_p99(_interactive(rows, contender, 0.0))
        ttft = row.summary["ttft_s"]
        ratio = "–" if not alone or ttft["p99"] is None else f"{ttft['p99'] / alone:.1f}x"
        batch = _batch(rows, contender, multiple)
        recovery = row.extra["recovery_s"]
        flood = f"{multiple:g}x" if multiple else "none"
        back = ("–" if not multiple else "not within the run" if recovery is None
                else f"{recovery:.1f} s")
        served = ("–" if batch is None or batch.summary is None
                  else f"{batch.summary['request_throughput']:.2f}")
        shed = _shed(batch)
        statuses = sorted({r.status for r in _shed_records(batch) if r.status is not None})
        shed_text = ("–" if batch is None or batch.run is None
                     else f"{len(shed)} of {len(batch.run.records)}"
                     + (f" ({', '.join(map(str, statuses))})" if statuses else ""))
        lines.append(f"| {CONTENDERS[contender]} | {flood} | {whole_ms(ttft['p50'])} / "
                     f"{whole_ms(ttft['p99'])} | {ratio} | {back} | {served} | {shed_text} | "
                     f"{whole_ms(percentile(shed, 99)) if shed else '–'} | "
                     f"{_retry_after_text(_shed_records(batch))} |")
    return lines


def _overload_plot(out: Path, rows: list[Row]) -> list[str]:
    """Interactive TTFT over time under the largest flood, per contender."""
    flooded = [r for r in rows if r.extra.get("tenant") == "interactive" and r.run is not None
               and r.extra["multiple"] == max(x.extra["multiple"] for x in rows
                                              if x.extra.get("tenant") == "interactive")]
    if not flooded:
        return []
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(8, 4))
    for row in flooded:
        assert row.run is not None
        done = [r for r in row.run.records if r.ttft is not None]
        axis.plot([r.start for r in done], [r.ttft for r in done], marker="o", markersize=3,
                  linewidth=1, label=CONTENDERS[row.extra["contender"]])
    axis.set_yscale("log")
    axis.set_xlabel("seconds into the run (the flood stops at the end of its window)")
    axis.set_ylabel("interactive TTFT (s)")
    axis.set_title(f"Interactive TTFT under a {flooded[0].extra['multiple']:g}x batch flood")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "interactive-ttft.png", dpi=110)
    plt.close(fig)
    return ["interactive-ttft.png"]


SCENARIOS = (Scenario("overload", overload, contenders=tuple(CONTENDERS),
                      tables=_overload_table, plots=_overload_plot),)
