"""A rollout drill's report: result.json, README.md and timeline.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router.bench.report import plot_timeline, targets_table
from router.bench.rollout import RolloutResult


def _secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _words(span: tuple[int, int]) -> str:
    return f"{span[0]}" if span[0] == span[1] else f"{span[0]}-{span[1]}"


def _change_lines(result: RolloutResult) -> list[str]:
    outcome = result.outcome
    if outcome is None:
        return [f"- The apply failed: {result.error}"]
    change = outcome.change
    lines = ["- Spec keys changed: " + ", ".join(f"`{k}`" for k in change.keys) + "."]
    if outcome.rolls:
        lines += ["", "| replica | drain | cut at drain timeout | restart to healthy | "
                  "back in rotation | rest of its slow start | total |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r.name} | {_secs(r.drain_s)} | {r.cut} | {_secs(r.restart_s)} | "
                  f"{_secs(r.rejoin_s)} | {_secs(r.settle_s)} | {_secs(r.total_s)} |"
                  for r in outcome.rolls]
        lines.append("")
    else:
        lines.append("- No replica was restarted.")
    if change.add:
        lines.append(f"- Started (new, alone): {', '.join(change.add)}.")
    if change.remove:
        lines.append(f"- Drained and stopped: {', '.join(change.remove)}.")
    if change.gateway:
        lines.append("- The gateway reloaded its new nginx.conf gracefully.")
    return lines


def markdown(result: RolloutResult, command: str, machine: dict[str, Any], plot: str) -> str:
    plan, m = result.plan, result.measures
    busy = m["slots_busy_before"]
    lines = [f"# Drill: rollout to {plan.to_spec.name}", "",
             f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
             f"{machine['memory_gib']} GiB, Python {machine['python']}; replicas: "
             f"{result.replicas} of engine {result.engine}.", "",
             "## How to repeat", "", "```sh", command, "```", "",
             "## What happened", "",
             f"- Load: streamed chat requests of {_words(plan.prompt_words)} prompt words and "
             f"{_words(plan.output_tokens)} output tokens, {plan.arrivals.describe()}, through "
             "the gateway"
             + (f"; before the apply {busy:.0%} of the fleet's batch slots were running a "
                "request on average (sampled from each replica's "
                "`vllm:num_requests_running`)." if busy is not None else "."),
             f"- `fleet apply` ran from {_secs(result.started_at)} to "
             f"{_secs(result.ended_at)} ({_secs(m['apply_s'])}).",
             *_change_lines(result),
             f"- Replicas in rotation at the lowest during the apply (the gateway's "
             f"`/fleet/status`, every 0.25 s): "
             f"{'not seen' if m['fewest_in_rotation'] is None else int(m['fewest_in_rotation'])}"
             f" of {result.replicas}.",
             f"- {result.summary['requests']:,} requests, {result.summary['failed']:,} failed: "
             f"{int(m['failed_before_first_byte'] or 0)} before their first byte, "
             f"{int(m['streams_cut'] or 0)} streams cut.", "",
             "| window | requests | failed | before first byte | streams cut | TTFT p50 | "
             "TTFT p99 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, w in result.windows.items():
        lines.append(f"| {name} | {w['requests']:,} | {w['failed']} | {w['not_started']} | "
                     f"{w['mid_stream']} | {_secs(w['ttft_p50_s'])} | {_secs(w['ttft_p99_s'])} |")
    takes_out = result.outcome is None or result.outcome.change.touches_replicas
    lines += ["", "The capacity dip is one replica's batch slots while it is out; the TTFT "
              "columns show what the clients paid for it." if takes_out else
              "No replica left rotation: there was no capacity dip."]
    bound = result.run.client_bound(plan.arrivals)
    if bound:
        lines += ["", f"The load client may have set some figures: {bound}."]
    lines += targets_table(result.targets)
    lines += ["", "## Timeline", "", f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def write(out: Path, result: RolloutResult, command: str, machine: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    # One mark per replica taken out or started; the other steps would crowd the plot.
    events = [(at, text.removesuffix(": draining")) for at, text in result.steps
              if text.endswith(": draining") or text.startswith("starting")]
    plot = plot_timeline(out, f"rollout to {result.plan.to_spec.name}", result.run,
                         events=[(result.started_at, "apply"), *events,
                                 (result.ended_at, "applied")])
    outcome = result.outcome
    (out / "result.json").write_text(json.dumps({
        "drill": "rollout", "to_spec": str(result.plan.to_spec), "engine": result.engine,
        "replicas": result.replicas, "command": command, "machine": machine,
        "load": result.plan.arrivals.describe(), "error": result.error,
        "keys": [str(k) for k in outcome.change.keys] if outcome else [],
        "rolls": [{"replica": r.name, "drain_s": r.drain_s, "cut": r.cut,
                   "restart_s": r.restart_s, "rejoin_s": r.rejoin_s, "settle_s": r.settle_s,
                   "total_s": r.total_s}
                  for r in (outcome.rolls if outcome else [])],
        "steps": [{"t": at, "step": text} for at, text in result.steps],
        "measures": result.measures, "windows": result.windows, "summary": result.summary,
        "targets": [{"target": t, "measured": f, "met": ok} for t, f, ok in result.targets],
    }, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(markdown(result, command, machine, plot), encoding="utf-8")
    return [out / "result.json", out / "README.md", out / plot]
