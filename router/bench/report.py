"""A benchmark run's report: result.json, README.md and PNG plots in one folder.

The Markdown states the exact command, the machine and the client's own
load, so every figure in it can be repeated and judged.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from router.bench.load import Arrivals, RunResult, Workload
from router.bench.stats import RequestRecord, percentile


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value * 1000:,.1f}"


def seen_s(value: float | None) -> str:
    """A drill's time to an event, or that the event never came."""
    return "not seen" if value is None else f"{value:.2f} s"


def targets_rows(targets: list[tuple[str, str, bool | None]]) -> list[str]:
    """A Markdown table of targets: what was asked, what was measured, the verdict."""
    verdicts = {True: "met", False: "**missed**", None: "not measured"}
    return (["| target | measured | verdict |", "| --- | --- | --- |"]
            + [f"| {text} | {figure} | {verdicts[met]} |" for text, figure, met in targets])


def targets_table(targets: list[tuple[str, str, bool | None]]) -> list[str]:
    """The targets under their own heading; nothing where there are none."""
    if not targets:
        return []
    return ["", "## Targets", "", *targets_rows(targets)]


def markdown(name: str, command: str, results: list[dict[str, Any]],
             machine: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# Benchmark: {name}", "",
             f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
             f"{machine['memory_gib']} GiB, Python {machine['python']}.", "",
             "## How to repeat", "", "```sh", command, "```", "",
             "## Results", "",
             "| load | requests | failed | req/s | output tok/s | goodput req/s | "
             "TTFT p50 / p90 / p99 (ms) | ITL p50 / p99 (ms) | E2E p50 / p90 / p99 (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for result in results:
        s = result["summary"]
        ttft, itl, e2e = s["ttft_s"], s["itl_s"], s["e2e_s"]
        lines.append(
            f"| {result['arrivals']} | {s['requests']:,} | {s['failed']:,} | "
            f"{s['request_throughput']:,.1f} | {s['output_token_throughput']:,.0f} | "
            f"{s['goodput']:,.1f} | {_ms(ttft['p50'])} / {_ms(ttft['p90'])} / "
            f"{_ms(ttft['p99'])} | {_ms(itl['p50'])} / {_ms(itl['p99'])} | "
            f"{_ms(e2e['p50'])} / {_ms(e2e['p90'])} / {_ms(e2e['p99'])} |")
    lines += ["", f"Goodput counts requests that met every SLO ({results[0]['summary']['slo']})."]
    for result in results:
        s = result["summary"]
        lines.append("")
        lines.append(f"**{result['arrivals']}**: served by "
                     + (", ".join(f"{k} {v:,}" for k, v in s["by_replica"].items()) or "none")
                     + f"; errors by phase: {s['errors_by_phase']}"
                     + (f"; failed statuses: {s['failed_statuses']}"
                        if s["failed_statuses"] else "")
                     + f"; the client used {result['client']['cpu_share']:.0%} of a core.")
        if result["client"]["bound"]:
            lines.append(f"**The client may have been the bottleneck**: "
                         f"{result['client']['bound']}. Treat these figures as a lower "
                         "bound of what the fleet can do.")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def result_entry(arrivals: Arrivals, workload: Workload, run: RunResult,
                 summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "arrivals": arrivals.describe(),
        "workload": {"path": workload.path, "stream": workload.stream,
                     "prompt_words": list(workload.prompt_words),
                     "output_tokens": list(workload.output_tokens),
                     "prompts_from_file": len(workload.prompts)},
        "summary": summary,
        "client": {"cpu_share": run.client_cpu_share, "send_lag_p99_s": run.send_lag_p99_s,
                   "dropped": run.dropped, "bound": run.client_bound(arrivals)},
    }


def _timeline(records: list[RequestRecord], bucket_s: float = 1.0
              ) -> tuple[list[float], list[float], dict[str, list[int]]]:
    """Per bucket: time, p50 E2E of requests started in it, requests per replica."""
    if not records:
        return [], [], {}
    buckets = int(max(r.start for r in records) // bucket_s) + 1
    latencies: dict[int, list[float]] = defaultdict(list)
    served: dict[str, Counter[int]] = defaultdict(Counter)
    for r in records:
        index = int(r.start // bucket_s)
        if r.ok and r.e2e is not None:
            latencies[index].append(r.e2e)
        served[r.replica or ("failed" if not r.ok else "?")][index] += 1
    times = [i * bucket_s for i in range(buckets)]
    p50 = [percentile(latencies[i], 50) if latencies[i] else math.nan for i in range(buckets)]
    return times, p50, {name: [c[i] for i in range(buckets)] for name, c in sorted(served.items())}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cdf(out: Path, series: list[tuple[str, list[RequestRecord]]],
             filename: str = "latency-cdf.png") -> str:
    """The E2E latency CDF of each labelled set of requests, on one chart."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, records in series:
        values = sorted(r.e2e for r in records if r.ok and r.e2e is not None)
        if values:
            ax.plot([v * 1000 for v in values],
                    [(i + 1) / len(values) for i in range(len(values))], label=label)
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency CDF")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / filename, dpi=110)
    plt.close(fig)
    return filename


# A moment to mark on a timeline: (seconds into the run, label).
Event = tuple[float, str]


def plot_timeline(out: Path, label: str, run: RunResult, filename: str = "timeline.png",
                  events: list[Event] | None = None) -> str:
    """Latency and per-replica traffic over time, weights overlaid, events marked."""
    plt = pyplot()
    times, p50, served = _timeline(run.records)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(times, [v * 1000 for v in p50], color="black")
    top.set_ylabel("p50 E2E (ms)")
    top.set_title(f"Over time: {label}")
    top.grid(alpha=0.3)
    if served:
        bottom.stackplot(times, *served.values(), labels=list(served), alpha=0.8)
    bottom.set_ylabel("requests started / s")
    bottom.set_xlabel("seconds into the run")
    bottom.grid(alpha=0.3)
    for at, text in events or []:
        for axis in (top, bottom):
            axis.axvline(at, color="red", linestyle=":", linewidth=1)
        top.annotate(text, (at, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                     fontsize=7, va="top", ha="right", color="red")
    if run.weights:
        overlay = bottom.twinx()
        names = sorted({n for sample in run.weights for n in sample["weights"]})
        for name in names:
            overlay.step([s["t"] for s in run.weights],
                         [s["weights"].get(name, math.nan) for s in run.weights],
                         where="post", linestyle="--", label=f"weight {name}")
        overlay.set_ylabel("controller weight (0: out of rotation)")
        overlay.legend(fontsize=7, loc="upper right")
    if served:
        bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / filename, dpi=110)
    plt.close(fig)
    return filename


def plots(out: Path, runs: list[tuple[str, RunResult]]) -> list[str]:
    """latency-cdf.png and timeline.png (the last run, weights overlaid)."""
    written = [plot_cdf(out, [(label, run.records) for label, run in runs])]
    if runs:
        written.append(plot_timeline(out, *runs[-1]))
    return written


def write(out: Path, name: str, command: str, machine: dict[str, Any],
          entries: list[dict[str, Any]], runs: list[tuple[str, RunResult]]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    drawn = plots(out, runs)
    (out / "result.json").write_text(json.dumps(
        {"name": name, "command": command, "machine": machine, "results": entries},
        indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(markdown(name, command, entries, machine, drawn),
                                   encoding="utf-8")
    return [out / "result.json", out / "README.md", *(out / p for p in drawn)]
