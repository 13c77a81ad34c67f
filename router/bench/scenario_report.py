"""A scenario's report: result.json, README.md and plots, one folder per scenario."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from router.bench.report import plot_cdf, plot_timeline, targets_table
from router.bench.scenario_kit import Row, Scenario, ScenarioResult


def ms_cell(value: float | None) -> str:
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
            f"{ms_cell(s['ttft_s']['p50'])} / {ms_cell(s['ttft_s']['p99'])} | "
            f"{ms_cell(s['e2e_s']['p50'])} / {ms_cell(s['e2e_s']['p90'])} / "
            f"{ms_cell(s['e2e_s']['p99'])} | "
            f"{share or '–'} |")
    failures = [f"- {row.label}: " + "; ".join(f"{count} x {kind}" for kind, count in
                                             row.summary.get("failure_examples", {}).items())
                for row in rows if row.summary is not None and row.summary["failed"]]
    if failures:
        lines += ["", "Failed requests, by how they failed:", ""] + failures
    return lines


def markdown(result: ScenarioResult, command: str, machine: dict[str, Any],
             plots: list[str], tables: list[str]) -> str:
    lines = [f"# Scenario `{result.name}`: {result.title}", "",
             f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
             f"{machine['memory_gib']} GiB, Python {machine['python']}. Every process of "
             "every contender (replicas, gateways, Prometheus, the load generator) shares it.",
             "", "## How to repeat", "", "```sh", command, "```", "", "## Setup", ""]
    lines += [f"- {item}" for item in result.setup]
    lines += ["", "## Results", ""] + _rows_table(result.rows)
    lines += tables
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


def write(out: Path, scenario: Scenario, result: ScenarioResult, command: str,
          machine: dict[str, Any], notes: list[str] | None = None) -> list[Path]:
    """The report of one run of ``scenario``: the rows table, then the
    scenario's own tables and plots."""
    out.mkdir(parents=True, exist_ok=True)
    result.notes.extend(notes or [])
    measured = [(row.label, [r for r in row.run.records if r.start >= row.measured_from_s])
                for row in result.rows if row.run is not None]
    plots = [plot_cdf(out, measured)]
    timeline = (result.rows[result.timeline_row] if result.rows and result.timeline_row >= 0
                else None)
    if timeline is not None and timeline.run is not None:
        plots.append(plot_timeline(out, timeline.label, timeline.run))
    plots += scenario.plots(out, result.rows)
    (out / "result.json").write_text(json.dumps(
        {"scenario": result.name, "command": command, "machine": machine,
         "setup": result.setup, "rows": [_row_json(r) for r in result.rows],
         "targets": [{"target": t, "measured": f, "met": m} for t, f, m in result.targets]},
        indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(markdown(result, command, machine, plots,
                                             scenario.tables(result.rows)),
                                    encoding="utf-8")
    return [out / "result.json", out / "README.md", *(out / p for p in plots)]
