"""`fleet bench scenario fairness`: two API keys of one class flooding the
fleet at 1:4, without and with fair shares per key (priority.fair_share).

The overload scenario's two simulated replicas of 8 slots each, keys on:
a "light" key runs 10 closed-loop streams, a "heavy" key 40, both in the
default class, both asking for the same long answers. Every client waits
out a Retry-After before its next request, as the openai SDK does. The
figure is how the tokens the fleet served split between the keys, as
Jain's fairness index: 1 for an even split, 0.5 when one key gets all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.bench import fleets, load, stats
from router.bench.fleets import Endpoint
from router.bench.scenario_kit import (
    Context,
    Row,
    Scenario,
    ScenarioResult,
    sim_text,
    tenant_keys,
    whole_ms,
)
from router.bench.scenarios.overload import OVERLOAD_SIM, REPLICAS, SLOTS

CONTENDERS = {"shared": "no shares (arrival order)", "fair": "fair shares per key"}
# Closed-loop streams per key: the 1:4.
STREAMS = {"light": 10, "heavy": 40}
JAIN_TARGET = 0.95


@dataclass(frozen=True)
class FairnessSize:
    seconds: float = 90.0
    # Left out of the figures: the controller counts the keys in use from the
    # gateway's log through Prometheus, so caps start a few scrapes in.
    warmup_s: float = 30.0
    tokens: int = 256


FULL = FairnessSize()
TINY = FairnessSize(seconds=6.0, warmup_s=2.0, tokens=16)


def jain(values: list[float]) -> float | None:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); None with nothing served."""
    square = sum(v * v for v in values)
    return None if not values or not square else sum(values) ** 2 / (len(values) * square)


def _served_tokens(run: load.RunResult, after_s: float) -> int:
    return sum(r.output_tokens for r in run.records if r.ok and r.start >= after_s)


def fairness(ctx: Context) -> ScenarioResult:
    own = ctx.pick(FULL, TINY)
    workload = load.Workload(model="sim-model", prompt_words=(64, 64),
                             output_tokens=(own.tokens,) * 2, seed=ctx.seed)
    chosen = [key for key in CONTENDERS if not ctx.contenders or key in ctx.contenders]
    rows: list[Row] = []
    for contender in chosen:
        data, path = ctx.fleet_spec(f"fairness/{contender}", REPLICAS,
                                    {"defaults": OVERLOAD_SIM}, auth={"enabled": True},
                                    priority={"enabled": True,
                                              "fair_share": contender == "fair"})
        keys = tenant_keys(Path(data["runtime_dir"]), dict.fromkeys(STREAMS))
        ctx.progress(f"fairness/{contender}: fleet up ({REPLICAS} simulated replicas)")
        with fleets.running_fleet(data, path, lambda _msg: None) as fleet:
            ctx.progress(f"fairness: {CONTENDERS[contender]}, {own.seconds:g} s")
            runs = _both(Endpoint(fleet.gateway_url).url, keys, workload, own.seconds)
        served = {tenant: _served_tokens(run, own.warmup_s) for tenant, run in runs.items()}
        index = jain([float(v) for v in served.values()])
        for tenant, run in runs.items():
            measured = [r for r in run.records if r.start >= own.warmup_s]
            rows.append(Row(f"{CONTENDERS[contender]}: {tenant} key ({STREAMS[tenant]} streams)",
                            run=run, measured_from_s=own.warmup_s,
                            summary=stats.summarize(measured, own.seconds - own.warmup_s,
                                                    stats.Slo()),
                            extra={"contender": contender, "tenant": tenant,
                                   "streams": STREAMS[tenant], "served_tokens": served[tenant],
                                   "jain": index,
                                   "refused": sum(1 for r in measured if r.status == 429)}))
    return ScenarioResult(
        name="fairness", title="Two keys of one class flooding at 1:4",
        setup=[f"{REPLICAS} simulated replicas ({sim_text(OVERLOAD_SIM)}; {SLOTS} slots in "
               "all), auth and priority classes on, the controller on with its defaults; a "
               "fresh fleet per contender.",
               f"Two keys in the default class: light with {STREAMS['light']} closed-loop "
               f"streams, heavy with {STREAMS['heavy']}, each asking for 64 prompt words and "
               f"{own.tokens} tokens out, streamed, for {own.seconds:g} s; every client waits "
               "out a Retry-After before its next request, as the openai SDK does.",
               "Contenders: priority.fair_share false (the replicas admit in arrival order) "
               "and true (while every slot is taken, each key in use may hold "
               f"{SLOTS} / keys in flight; past it, 429 with Retry-After).",
               f"The figures count requests started after the first {own.warmup_s:g} s: the "
               "controller counts the keys in use from the gateway's log through "
               "Prometheus, so caps start a few scrapes in. Served tokens: output tokens "
               "of the requests that completed."],
        rows=rows, targets=_targets(rows))


def _both(gateway: str, keys: dict[str, str], workload: load.Workload,
          seconds: float) -> dict[str, load.RunResult]:
    async def run() -> dict[str, load.RunResult]:
        results = await asyncio.gather(*(
            load.run(gateway, workload,
                     load.Arrivals("closed", concurrency=streams, honour_retry_after=True),
                     seconds, keys[tenant], sample_weights=False)
            for tenant, streams in STREAMS.items()))
        return dict(zip(STREAMS, results, strict=True))

    return asyncio.run(run())


def _targets(rows: list[Row]) -> list[tuple[str, str, bool | None]]:
    targets: list[tuple[str, str, bool | None]] = []
    for contender, label in CONTENDERS.items():
        mine = [r for r in rows if r.extra.get("contender") == contender]
        if not mine:
            continue
        index = mine[0].extra["jain"]
        tokens = ", ".join(f"{r.extra['tenant']} {r.extra['served_tokens']:,}" for r in mine)
        targets.append((f"{label}: two keys of one class flooding at 1:4, Jain's index of "
                        f"their served tokens >= {JAIN_TARGET:g}",
                        "nothing served" if index is None else f"{index:.3f} ({tokens})",
                        index is not None and index >= JAIN_TARGET))
    return targets


def _fairness_table(rows: list[Row]) -> list[str]:
    lines = ["", "### Tokens served per key", "",
             "| contender | key | streams | served tokens | share | 429s | completed | "
             "TTFT p50 / p99 | Jain's index |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows:
        if row.summary is None:
            continue
        extra: dict[str, Any] = row.extra
        both = sum(r.extra["served_tokens"] for r in rows
                   if r.extra.get("contender") == extra["contender"])
        ttft = row.summary["ttft_s"]
        lines.append(
            f"| {CONTENDERS[extra['contender']]} | {extra['tenant']} | {extra['streams']} | "
            f"{extra['served_tokens']:,} | "
            f"{extra['served_tokens'] / both:.0%} | {extra['refused']} | "
            f"{row.summary['succeeded']} | {whole_ms(ttft['p50'])} / {whole_ms(ttft['p99'])} | "
            + ("–" if extra["jain"] is None else f"{extra['jain']:.3f}") + " |")
    return lines


SCENARIOS = (Scenario("fairness", fairness, contenders=tuple(CONTENDERS),
                      tables=_fairness_table),)
