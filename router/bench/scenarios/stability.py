"""`fleet bench scenario stability`: does the controller hold still on an equal fleet?

Four equal simulated replicas, the adaptive controller on, and load at a
share of their measured capacity: closed loop and Poisson arrivals, uniform
and mixed prompts. On an equal fleet every applied weight change is a false
move, so each cell counts them, with the weights' range. Then the same
fleet with one replica slowed to a third for a while, under steady load:
how long until its weight is halved, and until it is back.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from router.affinity import AffinityMode
from router.bench import load
from router.bench.fleets import Fleet
from router.bench.report import pyplot
from router.bench.scenario_kit import (
    POLICY_SIM,
    Context,
    Row,
    Scenario,
    ScenarioResult,
    calibrate,
    sim_text,
    weight_changes,
    window_summary,
)
from router.config.spec import PaceSpec

# Shares of the fleet's measured capacity.
LOADS = (0.3, 0.8, 1.2)
ARRIVALS = ("closed", "poisson")
MIXES: dict[str, tuple[load.Range, load.Range]] = {
    # (prompt words, output tokens)
    "uniform": ((32, 64), (64, 128)),
    "mixed": ((10, 1500), (8, 256)),
}
SLOWED = "replica-3"
SLOW_FACTOR = 0.33
# The drill's load: steady, and the controller's own targets.
DRILL_LOAD = 0.8
HALVED_WEIGHT, BACK_WEIGHT = 25, 40
CHANGES_PER_10_MIN = 1
# Session keys the affinity cells' requests carry (the body's `user`).
SESSIONS = 200
# The capacity cells: replica-3 with half the batch slots of the others.
SMALL = "replica-3"
SMALL_SEQS = int(POLICY_SIM["max_num_seqs"]) // 2
CAPACITY_LOAD = 0.8
CAPACITY_CONTENDERS = (("least_conn, static weights (nginx)", False),
                       ("llm-fleet adaptive", True))


@dataclass(frozen=True)
class Cell:
    load_share: float
    arrivals: str
    mix: str

    @property
    def label(self) -> str:
        return f"{self.load_share:.0%} load, {self.arrivals}, {self.mix} prompts"


def cells(every: bool) -> list[Cell]:
    if not every:
        return [Cell(0.3, "closed", "uniform"), Cell(1.2, "poisson", "mixed")]
    return [Cell(share, arrivals, mix) for share in LOADS for arrivals in ARRIVALS
            for mix in MIXES]


def _arrivals(cell: Cell, capacity: float) -> load.Arrivals:
    if cell.arrivals == "poisson":
        return load.Arrivals("poisson", rate=round(cell.load_share * capacity, 2))
    # A closed loop holds its clients in flight: a share of the fleet's batch slots.
    slots = int(POLICY_SIM["max_num_seqs"]) * 4
    return load.Arrivals("closed", concurrency=max(1, round(cell.load_share * slots)))


def weights_range(samples: list[dict[str, Any]]) -> tuple[int, int] | None:
    seen = [w for s in samples for w in s["weights"].values() if w is not None]
    return (min(seen), max(seen)) if seen else None


def first_sample(samples: list[dict[str, Any]], after_s: float, test: Any) -> float | None:
    """Seconds from ``after_s`` to the first sample whose slowed replica's weight passes."""
    for sample in samples:
        weight = sample["weights"].get(SLOWED)
        if sample["t"] >= after_s and weight is not None and test(weight):
            return float(sample["t"]) - after_s
    return None


async def _slow_drill(fleet: Fleet, workload: load.Workload, rate: float,
                      slow_at: float, clear_at: float, total: float) -> load.RunResult:
    url = fleet.replica_urls[int(SLOWED.rsplit("-", 1)[1])]

    async def faults() -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            await asyncio.sleep(slow_at)
            (await client.post(f"{url}/sim/faults", json={"slow": SLOW_FACTOR})
             ).raise_for_status()
            await asyncio.sleep(clear_at - slow_at)
            (await client.post(f"{url}/sim/faults", json={"clear": True})).raise_for_status()

    fault_task = asyncio.create_task(faults())
    try:
        return await load.run(fleet.gateway_url, workload, load.Arrivals("poisson", rate=rate),
                              total, sample_weights=True)
    finally:
        await fault_task


def _equal_cells(ctx: Context, fleet: Fleet, capacity: float, affinity: AffinityMode,
                 result: ScenarioResult) -> int:
    """Every cell on one equal fleet; the applied weight changes, all cells together."""
    cell_s = ctx.size.measure_s
    total_changes = 0
    for cell in cells(every=not ctx.tiny):
        prompts, outputs = MIXES[cell.mix]
        workload = load.Workload(model="sim-model", prompt_words=prompts, output_tokens=outputs,
                                 seed=ctx.seed,
                                 sessions=SESSIONS if affinity.keyed else 0)
        arrivals = _arrivals(cell, capacity)
        label = f"{cell.label}, affinity {affinity}"
        ctx.progress(f"stability: {label} for {cell_s:g}s")
        run = asyncio.run(load.run(fleet.gateway_url, workload, arrivals, cell_s,
                                   sample_weights=True))
        changes = weight_changes(run.weights, 0.0)
        total_changes += changes
        low_high = weights_range(run.weights)
        result.rows.append(Row(label, summary=window_summary(run, 0.0, cell_s), run=run,
                               extra={"weight_changes": changes, "weights_range": low_high,
                                      "arrivals": arrivals.describe()}))
        span = "–" if low_high is None else f"{low_high[0]}-{low_high[1]}"
        result.targets.append((
            f"{label}: at most {CHANGES_PER_10_MIN} applied weight change per 10 min",
            f"{changes} in {cell_s:g} s (weights {span})",
            changes * 600 / cell_s <= CHANGES_PER_10_MIN))
    return total_changes


def stability(ctx: Context) -> ScenarioResult:
    size = ctx.size
    every = not ctx.tiny
    cell_s = size.measure_s
    rows: list[Row] = []
    result = ScenarioResult(name="stability", title="Weights that hold still on an equal fleet",
                            setup=[], rows=rows)
    sim: dict[str, Any] = {"defaults": POLICY_SIM}
    uniform = load.Workload(model="sim-model", prompt_words=MIXES["uniform"][0],
                            output_tokens=MIXES["uniform"][1], seed=ctx.seed)
    total_changes = 0
    with ctx.fleet("stability/affinity-off", 4, sim) as fleet:
        capacity, per_replica = calibrate(fleet, uniform, size.calibrate_s)
        ctx.progress(f"stability: capacity {capacity:.1f} req/s")
        total_changes += _equal_cells(ctx, fleet, capacity, AffinityMode.OFF, result)
        slow_at, clear_at = (size.warmup_s, size.warmup_s + cell_s)
        total = clear_at + max(cell_s / 2, 30.0 if every else 2.0)
        rate = round(DRILL_LOAD * capacity, 2)
        ctx.progress(f"stability: {SLOWED} at speed {SLOW_FACTOR:g} from {slow_at:g}s to "
                     f"{clear_at:g}s of {total:g}s, Poisson {rate:g} req/s")
        drill = asyncio.run(_slow_drill(fleet, uniform, rate, slow_at, clear_at, total))
    with ctx.fleet("stability/affinity-session", 4, sim,
                   gateway={"affinity": AffinityMode.SESSION.value}) as fleet:
        total_changes += _equal_cells(ctx, fleet, capacity, AffinityMode.SESSION, result)
    rows += _capacity_rows(ctx, result)
    halved = first_sample(drill.weights, slow_at, lambda w: w <= HALVED_WEIGHT)
    # Back only counts for a weight that went down.
    back = (first_sample(drill.weights, clear_at, lambda w: w >= BACK_WEIGHT)
            if halved is not None else None)
    rows.insert(len(rows) - len(CAPACITY_CONTENDERS), Row(
        f"{SLOWED} slowed to a third", summary=window_summary(drill, 0.0, total), run=drill,
        extra={"weight_changes": weight_changes(drill.weights, 0.0),
               "halved_after_s": halved, "back_after_s": back,
               "slowed_at_s": slow_at, "cleared_at_s": clear_at}))
    result.timeline_row = len(rows) - len(CAPACITY_CONTENDERS) - 1
    result.targets += [
        ("a replica slowed to a third is halved within 5 s", _seconds(halved),
         halved is not None and halved <= 5.0),
        ("...and back within 20 s of the fault clearing", _seconds(back),
         back is not None and back <= 20.0),
    ]
    result.setup[:0] = [
        f"4 simulated replicas ({sim_text(POLICY_SIM)}), one fleet for every cell, the "
        "adaptive controller on with its defaults (pace probes every "
        f"{PaceSpec().interval_s:g} s, the sequential "
        "test's budget of one false move an hour); every cell on a fleet with gateway.affinity "
        f"off, then again on one with affinity session, whose requests carry one of {SESSIONS} "
        "session keys (the body's `user`).",
        f"Capacity measured first: each replica driven directly with "
        f"{POLICY_SIM['max_num_seqs']} concurrent clients for {size.calibrate_s:g} s, all four "
        f"at once: {', '.join(f'{c:.1f}' for c in per_replica)} requests/s, "
        f"{capacity:.1f} in all.",
        "Cells, one after another on the same fleet, "
        f"{cell_s:g} s each: load at {', '.join(f'{s:.0%}' for s in LOADS)} of capacity "
        "(Poisson at that share of the request rate; a closed loop of that share of the "
        f"{int(POLICY_SIM['max_num_seqs']) * 4} batch slots), uniform prompts (32-64 words, "
        "64-128 tokens out) and mixed ones (10-1,500 words, 8-256 tokens out).",
        f"Weights sampled from /fleet/status every {load.WEIGHT_SAMPLE_S:g} s; an applied "
        "change is a sample whose weights differ from the one before.",
        f"The drill: Poisson at {DRILL_LOAD:.0%} of capacity, uniform prompts; {SLOWED} set "
        f"to speed {SLOW_FACTOR:g} through the simulator's /sim/faults at {slow_at:g} s and "
        f"cleared at {clear_at:g} s. Halved: its weight at {HALVED_WEIGHT} or less; back: "
        f"{BACK_WEIGHT} or more.",
    ]
    floor = _equal_fleet_floor(rows)
    if floor is not None:
        result.notes.append(floor)
    equal_s = 2 * len(cells(every)) * cell_s
    result.notes.append(
        f"{total_changes} applied weight change(s) in {equal_s / 60:g} minutes of equal "
        f"fleets ({2 * len(cells(every))} cells of {cell_s:g} s).")
    return result


def _capacity_rows(ctx: Context, result: ScenarioResult) -> list[Row]:
    """The same load on a fleet whose replica-3 has half the batch slots,
    with static weights and with the controller: P99 E2E and throughput."""
    size = ctx.size
    sim: dict[str, Any] = {"defaults": POLICY_SIM,
                           "replicas": [{}, {}, {}, {"max_num_seqs": SMALL_SEQS}]}
    workload = load.Workload(model="sim-model", prompt_words=MIXES["uniform"][0],
                             output_tokens=MIXES["uniform"][1], seed=ctx.seed)
    rows: list[Row] = []
    rate = 0.0
    for label, controller in CAPACITY_CONTENDERS:
        folder = "adaptive" if controller else "least_conn"
        with ctx.fleet(f"stability/half-seqs-{folder}", 4, sim, controller=controller) as fleet:
            if not rate:
                capacity, _ = calibrate(fleet, workload, size.calibrate_s)
                rate = round(CAPACITY_LOAD * capacity, 2)
            total = size.warmup_s + size.measure_s
            ctx.progress(f"stability: {SMALL} with {SMALL_SEQS} slots, {label}: Poisson "
                         f"{rate:g} req/s for {total:g}s (first {size.warmup_s:g}s warm-up)")
            run = asyncio.run(load.run(fleet.gateway_url, workload,
                                       load.Arrivals("poisson", rate=rate), total,
                                       sample_weights=controller))
        row = Row(f"{SMALL} at {SMALL_SEQS} slots: {label}",
                  summary=window_summary(run, size.warmup_s, size.measure_s), run=run,
                  measured_from_s=size.warmup_s)
        if controller:
            row.extra["weight_changes"] = weight_changes(run.weights, size.warmup_s)
            row.extra["weights_range"] = weights_range(
                [w for w in run.weights if w["t"] >= size.warmup_s])
        rows.append(row)
    static, adaptive = (r.summary for r in rows)
    assert static is not None and adaptive is not None
    e2e = (adaptive["e2e_s"]["p99"] / static["e2e_s"]["p99"]
           if adaptive["e2e_s"]["p99"] and static["e2e_s"]["p99"] else None)
    throughput = (adaptive["request_throughput"] / static["request_throughput"]
                  if static["request_throughput"] else None)
    result.targets += [
        (f"{SMALL} at half the max_num_seqs, {CAPACITY_LOAD:.0%} load: adaptive P99 E2E "
         "<= 0.7 x least_conn's", "–" if e2e is None else f"{e2e:.2f} x",
         e2e is not None and e2e <= 0.7),
        ("...with throughput not lower (within 2 %)",
         "–" if throughput is None else f"{throughput - 1:+.1%}",
         throughput is not None and throughput >= 0.98),
    ]
    result.setup.append(
        f"Capacity cells: a fresh fleet each, {SMALL} with max_num_seqs {SMALL_SEQS} (the others "
        f"{POLICY_SIM['max_num_seqs']}), Poisson at {CAPACITY_LOAD:.0%} of that fleet's measured "
        f"capacity ({rate:g} requests/s), uniform prompts, {size.warmup_s:g} s warm-up then "
        f"{size.measure_s:g} s measured; static least_conn against the controller.")
    return rows


def _equal_fleet_floor(rows: list[Row]) -> str | None:
    """What no router can beat in the capacity cells: an equal fleet at the
    same share of its own capacity, with the same arrivals and prompts, has
    no slow replica to route around."""
    label = f"{CAPACITY_LOAD:.0%} load, poisson, uniform prompts, affinity {AffinityMode.OFF}"
    equal = next((r.summary for r in rows if r.label == label and r.summary), None)
    capacity = [r.summary for r in rows if r.label.startswith(f"{SMALL} at ") and r.summary]
    if equal is None or len(capacity) != len(CAPACITY_CONTENDERS):
        return None
    static, adaptive = (summary["e2e_s"]["p99"] for summary in capacity)
    floor = equal["e2e_s"]["p99"]
    if not (static and adaptive and floor):
        return None
    return (f"The floor under the capacity cells: the equal fleet at the same "
            f"{CAPACITY_LOAD:.0%} share of its capacity (Poisson, uniform prompts) had P99 "
            f"E2E {floor * 1000:,.0f} ms, {floor / static:.2f} x least_conn's "
            f"{static * 1000:,.0f} ms on the half-slots fleet; the controller's "
            f"{adaptive * 1000:,.0f} ms is {adaptive / floor:.2f} x that floor. 0.7 x "
            f"least_conn's ({0.7 * static * 1000:,.0f} ms) would be {0.7 * static / floor:.2f} "
            "x the equal fleet's own: it asks the fleet with a small replica to beat one "
            "with none, when decoding 64-128 tokens is most of every request's time.")


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def plot_weights(out: Path, rows: list[Row], filename: str = "weights.png") -> str:
    """The controller's weights over time: every equal-fleet cell back to back,
    then the drill with its slowed replica."""
    plt = pyplot()
    equal = [r for r in rows if r.run is not None and "weights_range" in r.extra
             and "affinity" in r.label]
    drill = next((r for r in rows if "slowed_at_s" in r.extra and r.run is not None), None)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6))
    offset = 0.0
    for row in equal:
        assert row.run is not None
        names = sorted({n for s in row.run.weights for n in s["weights"]})
        for index, name in enumerate(names):
            top.step([offset + s["t"] for s in row.run.weights],
                     [s["weights"].get(name, math.nan) for s in row.run.weights],
                     where="post", color=f"C{index}", linewidth=1,
                     label=name if row is equal[0] else None)
        offset += row.run.duration_s
        top.axvline(offset, color="grey", linewidth=0.5, linestyle=":")
    top.set_title("Equal fleets, every cell back to back (dotted: a new cell)")
    top.set_ylabel("weight")
    top.set_ylim(0, 105)
    top.grid(alpha=0.3)
    if equal:
        top.legend(fontsize=7, loc="lower right")
    if drill is not None and drill.run is not None:
        names = sorted({n for s in drill.run.weights for n in s["weights"]})
        for index, name in enumerate(names):
            bottom.step([s["t"] for s in drill.run.weights],
                        [s["weights"].get(name, math.nan) for s in drill.run.weights],
                        where="post", color=f"C{index}", label=name)
        for key, text in (("slowed_at_s", "slowed to a third"), ("cleared_at_s", "cleared")):
            bottom.axvline(drill.extra[key], color="red", linestyle=":")
            bottom.annotate(text, (drill.extra[key], 100), rotation=90, fontsize=7, va="top",
                            ha="right", color="red")
        bottom.set_title(drill.label)
        bottom.legend(fontsize=7, loc="lower left")
    bottom.set_ylabel("weight")
    bottom.set_xlabel("seconds")
    bottom.set_ylim(0, 105)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / filename, dpi=110)
    plt.close(fig)
    return filename


SCENARIOS = (Scenario("stability", stability,
                      plots=lambda out, rows: [plot_weights(out, rows)] if rows else []),)
