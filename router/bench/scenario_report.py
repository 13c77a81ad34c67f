"""A scenario's report: result.json, README.md and plots, one folder per scenario."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from router.bench.report import plot_cdf, plot_timeline, pyplot, targets_table
from router.bench.scenario import Row, ScenarioResult


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value * 1000:,.1f}"


def _rows_table(rows: list[Row]) -> list[str]:
    lines = ["| contender | requests | failed | req/s | goodput req/s | "
             "TTFT p50 / p99 (ms) | E2E p50 / p90 / p99 (ms) | served by |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for row in rows:
        if row.summary is None:
            lines.append(f"| {row.label} | – | – | – | – | – | – | skipped: {row.skipped} |")
            continue
        s = row.summary
        total = max(1, s["succeeded"])
        share = ", ".join(f"{k.removeprefix('replica-')}: {v / total:.0%}"
                          for k, v in s["by_replica"].items() if k != "?")
        lines.append(
            f"| {row.label} | {s['requests']:,} | {s['failed']:,} | "
            f"{s['request_throughput']:,.1f} | {s['goodput']:,.1f} | "
            f"{_ms(s['ttft_s']['p50'])} / {_ms(s['ttft_s']['p99'])} | "
            f"{_ms(s['e2e_s']['p50'])} / {_ms(s['e2e_s']['p90'])} / {_ms(s['e2e_s']['p99'])} | "
            f"{share or '–'} |")
    failures = [f"- {row.label}: " + "; ".join(f"{count} x {kind}" for kind, count in
                                             row.summary.get("failure_examples", {}).items())
                for row in rows if row.summary is not None and row.summary["failed"]]
    if failures:
        lines += ["", "Failed requests, by how they failed:", ""] + failures
    return lines


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
            f"{_ms(lv['e2e_p99_s'])} ms" + (" (client-bound)" if lv["client_bound"] else "")
            for lv in capacity["levels"])
        lines.append(f"| {row.label} | {_signed_ms(added.get('p50'))} | "
                     f"{_signed_ms(added.get('p99'))} | {capacity['sustained_rate']:g} | "
                     f"{levels} |")
    return lines


def _signed_ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:+.2f}"


def _scaling_table(rows: list[Row]) -> list[str]:
    lines = ["", "### Scaling", "",
             "| fleet | req/s | N x one replica | ratio |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        assert row.summary is not None
        lines.append(f"| {row.label} | {row.summary['request_throughput']:,.1f} | "
                     f"{row.extra['ideal']:,.1f} | {row.extra['ratio']:.3f} |")
    return lines


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _reloads_table(rows: list[Row]) -> list[str]:
    lines = ["", "### Running requests per replica, max/min", "",
             "| run | reloads | mean | p50 | p95 | max | samples | samples with an idle "
             "replica |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        spread = row.extra["imbalance"]
        lines.append(f"| {row.label} | {row.extra['reloads']} | {_ratio(spread['mean'])} | "
                     f"{_ratio(spread['p50'])} | {_ratio(spread['p95'])} | "
                     f"{_ratio(spread['max'])} | {spread['samples']} | "
                     f"{spread['samples_with_an_idle_replica']} |")
    return lines


def _chat_table(rows: list[Row]) -> list[str]:
    lines = ["", "### Prefix cache and queues", "",
             "| contender | prefix cache hit rate per replica | worst queue (max / mean of "
             "samples) |", "| --- | --- | --- |"]
    for row in rows:
        if row.summary is None:
            continue
        rates = ", ".join("–" if r is None else f"{r:.0%}"
                          for r in row.extra["prefix_cache_hit_rate"])
        lines.append(f"| {row.label} | {rates} | {row.extra['worst_queue']:.0f} / "
                     f"{row.extra['mean_worst_queue']:.1f} |")
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


def markdown(result: ScenarioResult, command: str, machine: dict[str, Any],
             plots: list[str]) -> str:
    lines = [f"# Scenario `{result.name}`: {result.title}", "",
             f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
             f"{machine['memory_gib']} GiB, Python {machine['python']}. Every process of "
             "every contender (replicas, gateways, Prometheus, the load generator) shares it.",
             "", "## How to repeat", "", "```sh", command, "```", "", "## Setup", ""]
    lines += [f"- {item}" for item in result.setup]
    lines += ["", "## Results", ""] + _rows_table(result.rows)
    if result.name == "overhead":
        lines += _overhead_tables(result.rows)
    if result.name == "scaling":
        lines += _scaling_table(result.rows)
    if result.name == "reloads":
        lines += _reloads_table(result.rows)
    if result.name in ("chat", "chat-hot"):
        lines += _chat_table(result.rows)
    changes = [(r.label, r.extra["weight_changes"]) for r in result.rows
               if "weight_changes" in r.extra]
    if changes:
        lines += [""] + [f"{label}: the weights changed {count} time(s) after the warm-up "
                         "(each change is a gateway reload)." for label, count in changes]
    lines += targets_table(result.targets)
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _row_json(row: Row) -> dict[str, Any]:
    return {"label": row.label, "skipped": row.skipped, "summary": row.summary,
            "measured_from_s": row.measured_from_s, "extra": row.extra,
            "client": None if row.run is None else {
                "cpu_share": row.run.client_cpu_share, "send_lag_p99_s": row.run.send_lag_p99_s,
                "dropped": row.run.dropped}}


def write(out: Path, result: ScenarioResult, command: str, machine: dict[str, Any],
          notes: list[str] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    result.notes.extend(notes or [])
    measured = [(row.label, [r for r in row.run.records if r.start >= row.measured_from_s])
                for row in result.rows if row.run is not None]
    plots = [plot_cdf(out, measured)]
    timeline = (result.rows[result.timeline_row] if result.rows and result.timeline_row >= 0
                else None)
    if timeline is not None and timeline.run is not None:
        plots.append(plot_timeline(out, timeline.label, timeline.run))
    if result.name == "reloads" and result.rows:
        plots.append(plot_imbalance(out, result.rows))
    if result.name == "stability" and result.rows:
        plots.append(plot_weights(out, result.rows))
    (out / "result.json").write_text(json.dumps(
        {"scenario": result.name, "command": command, "machine": machine,
         "setup": result.setup, "rows": [_row_json(r) for r in result.rows],
         "targets": [{"target": t, "measured": f, "met": m} for t, f, m in result.targets]},
        indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(markdown(result, command, machine, plots), encoding="utf-8")
    return [out / "result.json", out / "README.md", *(out / p for p in plots)]
