"""A drill's report: result.json, README.md and timeline.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router.bench import stats
from router.bench.drill import DUTY_PERIOD_S, SLOW_FACTOR, DrillResult, window_bounds
from router.bench.report import Event, plot_timeline, seen_s, targets_table

_FAULT_TEXT = {
    "kill": "SIGKILL of the replica and every process under it; the supervisor starts it again",
    "restart": "SIGTERM of the replica (a graceful stop); the supervisor starts it again",
    "hang": "the replica stops answering with its sockets open, then resumes",
    "slow": f"the replica runs at {SLOW_FACTOR:g} of its speed, then recovers",
}
_REAL_SLOW_TEXT = (f"the replica's engine processes run {SLOW_FACTOR:g} of every "
                   f"{DUTY_PERIOD_S * 1000:g} ms (SIGSTOP, SIGCONT), then run freely again")


def events(result: DrillResult) -> list[Event]:
    seen = result.seen
    marks = [(seen.fault_at, result.plan.fault), (seen.cleared_at, "fault cleared"),
             (seen.out_at, "out of rotation"), (seen.healthy_at, "healthy"),
             (seen.back_at, "back in rotation")]
    return [(at, text) for at, text in marks if at is not None]


def _share(records: list[stats.RequestRecord], replica: str, low: float, high: float) -> str:
    inside = [r for r in records if low <= r.start < high and r.ok]
    if not inside:
        return "–"
    return f"{sum(1 for r in inside if r.replica == replica) / len(inside):.0%}"


def _moments(result: DrillResult) -> list[str]:
    """What the three clocks saw, as sentences; only what was seen is said."""
    m, lines = result.measures, []
    unhealthy, healthy = m["unhealthy_after_fault_s"], m["healthy_after_fault_s"]
    if unhealthy is None:
        lines.append("- The replica's `/health` kept answering throughout.")
    else:
        lines.append(f"- The replica's `/health` failed {seen_s(unhealthy)} after the fault"
                     + (f" and answered again {seen_s(healthy)} after it." if healthy is not None
                        else "; it did not answer again while the drill watched."))
    out, back = m["out_of_rotation_after_fault_s"], m["back_after_healthy_s"]
    if out is None:
        lines.append("- The gateway never took it out of rotation.")
    else:
        lines.append(f"- The gateway stopped routing to it {seen_s(out)} after the fault (read "
                     "from `/fleet/status`: the controller's reload was live)"
                     + (f", and routed to it again {seen_s(back)} after it was healthy."
                        if back is not None else "; it was not back while the drill watched."))
    before, lowest = m.get("weight_before"), m.get("weight_lowest_during")
    if before is not None and lowest is not None and out is None:
        halved = m.get("weight_halved_after_fault_s")
        lines.append(f"- The controller's weight for it went from {before:g} to {lowest:g} at "
                     "the lowest during the fault"
                     + (f"; it was halved {seen_s(halved)} after the fault." if halved is not None
                        else "; it was never halved."))
        regained = m.get("weight_regained_after_clear_s")
        if result.plan.fault in ("hang", "slow") and halved is not None:
            lines.append(f"- It had 80 % of its weight again {seen_s(regained)} after the "
                         "fault ended." if regained is not None else
                         "- It did not have 80 % of its weight again while the drill watched.")
    if result.plan.static:
        lines.append("- Static weights: every replica was pinned at the base weight for the "
                     "whole drill (`--static`), so the gateway balanced with plain "
                     "`least_conn`; health still took replicas out.")
    return lines


def markdown(result: DrillResult, command: str, machine: dict[str, Any], plot: str) -> str:
    plan, seen, m = result.plan, result.seen, result.measures
    lines = [f"# Drill: {plan.fault} {plan.replica}", "",
             f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
             f"{machine['memory_gib']} GiB, Python {machine['python']}; replicas: "
             f"engine {result.engine}.", "",
             "## How to repeat", "", "```sh", command, "```", "",
             "## What happened", "",
             f"- Load: streamed chat requests, {plan.output_tokens[0]}-{plan.output_tokens[1]} "
             f"output tokens, Poisson arrivals at {plan.rate:g} requests/s through the gateway.",
             f"- Fault at {seen_s(seen.fault_at)}: "
             + (_REAL_SLOW_TEXT if plan.fault == "slow" and result.engine != "sim"
                else _FAULT_TEXT[plan.fault])
             + (f"; held {plan.hold_s:g} s." if plan.fault in ("hang", "slow") else "."),
             *_moments(result),
             f"- {result.summary['requests']:,} requests, {result.summary['failed']:,} failed: "
             f"{int(m['failed_before_first_byte'] or 0)} before their stream started, "
             f"{int(m['failed_mid_stream'] or 0)} mid-stream (a stream cut when its replica "
             "dies cannot be moved: its tokens came from that replica).", "",
             "The middle window runs from the fault until the replica was back in rotation "
             "(or, if it never left, until the fault ended).", "",
             "| window | requests | failed | connect | before first byte | HTTP status | "
             f"mid-stream | share served by {plan.replica} |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    bounds = window_bounds(seen)
    for name, w in result.windows.items():
        lines.append(f"| {name} | {w['requests']:,} | {w['failed']:,} | {w[stats.CONNECT]} | "
                     f"{w[stats.BEFORE_FIRST_BYTE]} | {w[stats.HTTP_STATUS]} | "
                     f"{w[stats.MID_STREAM]} | "
                     f"{_share(result.run.records, plan.replica, *bounds[name])} |")
    failed_statuses = result.summary["failed_statuses"]
    if failed_statuses:
        lines += ["", "Failed statuses (a 200 here is a stream that broke off): "
                  f"{failed_statuses}."]
    lines += targets_table(result.targets)
    lines += ["", "## Timeline", "", f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def write(out: Path, result: DrillResult, command: str, machine: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_timeline(out, f"{result.plan.fault} {result.plan.replica}", result.run,
                         events=events(result))
    seen = result.seen
    (out / "result.json").write_text(json.dumps({
        "drill": result.plan.fault, "replica": result.plan.replica, "engine": result.engine,
        "command": command, "machine": machine, "rate": result.plan.rate,
        "moments_s": {"fault": seen.fault_at, "cleared": seen.cleared_at,
                      "unhealthy": seen.unhealthy_at, "healthy": seen.healthy_at,
                      "out_of_rotation": seen.out_at, "back_in_rotation": seen.back_at},
        "measures": result.measures, "windows": result.windows, "summary": result.summary,
        "targets": [{"target": t, "measured": f, "met": ok} for t, f, ok in result.targets],
    }, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(markdown(result, command, machine, plot), encoding="utf-8")
    return [out / "result.json", out / "README.md", out / plot]
