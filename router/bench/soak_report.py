"""A soak's report: result.json, README.md and the plots of its series over time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router.bench import stats
from router.bench.report import pyplot, targets_table
from router.bench.soak import SoakResult, memory_growth, to_json

_EVENT_COLOURS = {"kill": "red", "weight": "grey", "key": "green"}


def _summary(run: Any) -> dict[str, Any]:
    return stats.summarize(run.records, run.duration_s, stats.Slo())


def _mark_events(axis: Any, result: SoakResult) -> None:
    for event in result.events:
        axis.axvline(event["t"] / 60, color=_EVENT_COLOURS[event["kind"]], linestyle=":",
                     linewidth=0.8, alpha=0.7)


def _plot_soak(out: Path, result: SoakResult) -> list[str]:
    plt = pyplot()
    samples = result.samples
    minutes = [s["t"] / 60 for s in samples]
    names = sorted({n for s in samples for n in s["rss_mib"]})

    fig, ax = plt.subplots(figsize=(8, 4))
    for name in names:
        ax.plot(minutes, [s["rss_mib"].get(name, 0.0) for s in samples], label=name)
    _mark_events(ax, result)
    ax.set_xlabel("minutes into the soak (red: replica killed, grey: weight pinned, "
                  "green: key added)", fontsize=8)
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("Memory of the gateway's processes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.plot(minutes, [s["fds"] for s in samples], color="black")
    top.set_ylabel("open file descriptors")
    top.set_title("File descriptors, nginx workers and disk")
    top.grid(alpha=0.3)
    bottom.step(minutes, [s["workers"] for s in samples], where="post", label="serving workers")
    bottom.step(minutes, [s["old_workers"] for s in samples], where="post",
                label="workers shutting down")
    bottom.set_ylabel("nginx workers")
    bottom.set_xlabel("minutes into the soak")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=7)
    _mark_events(top, result)
    fig.tight_layout()
    fig.savefig(out / "fds-workers.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(minutes, [s["disk_mib"] for s in samples], label="runtime directory")
    ax.plot(minutes, [s["logs_mib"] for s in samples], label="logs")
    bound = (result.size.keep + 1) * result.size.rotate_size_mb
    ax.axhline(bound, color="red", linestyle="--", linewidth=1,
               label=f"logs bound {bound} MiB")
    ax.set_xlabel("minutes into the soak")
    ax.set_ylabel("MiB")
    ax.set_title("Disk use")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "disk.png", dpi=110)
    plt.close(fig)
    return ["memory.png", "fds-workers.png", "disk.png"]


def _plot_storm(out: Path, result: SoakResult) -> str:
    plt = pyplot()
    samples = result.storm_samples
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.step([s["t"] for s in samples], [s["workers"] + s["old_workers"] for s in samples],
            where="post", label="all nginx workers")
    ax.step([s["t"] for s in samples], [s["old_workers"] for s in samples], where="post",
            label="shutting down")
    if result.storm_reloads:
        ax.axvspan(result.storm_reloads[0], result.storm_reloads[-1], color="orange", alpha=0.15,
                   label=f"a reload every {result.size.storm_reload_every_s:g} s")
    ax.set_xlabel("seconds into the storm")
    ax.set_ylabel("processes")
    ax.set_title(f"Reload storm: {result.size.storm_streams} long streams")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "storm.png", dpi=110)
    plt.close(fig)
    return "storm.png"


def _fmt_s(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"


def markdown(result: SoakResult, command: str, machine: dict[str, Any]) -> str:
    size = result.size
    soak = [_summary(run) for run in result.runs]
    growth = memory_growth(result.samples, size.growth_from_s)
    first = min(result.samples, key=lambda s: abs(s["t"] - size.growth_from_s))
    last = result.samples[-1]
    kinds = {k: sum(1 for e in result.events if e["kind"] == k and e["ok"])
             for k in ("kill", "weight", "key")}
    failed_events = [e for e in result.events if not e["ok"]]
    lines = [
        "# Soak: a simulated fleet under faults and changes", "",
        f"Command: `{command}`", "",
        f"Machine: {machine.get('cpu_model', '?')}, {machine.get('cpus', '?')} CPUs, "
        f"{machine.get('memory_gib', '?')} GiB, Python {machine.get('python', '?')}.", "",
        "## Set-up", "",
        "- `fleet up` of 4 simulated replicas (a 20 ms step plus 0.4 ms per sequence, 32 "
        "sequences at most), nginx, Prometheus, mtail, the controller, supervisord; API keys "
        f"on; logs rotated past {size.rotate_size_mb} MiB, {size.keep} kept, checked every 5 s "
        "(small on purpose, so that rotation happens during the run).",
        f"- Capacity measured first (each replica driven directly with a full batch): "
        f"{result.capacity:.1f} requests/s. Load: Poisson at {result.rate:.1f} requests/s "
        f"({size.load_share:.0%}), half streamed chat completions, half not, "
        f"{size.output_tokens[0]}-{size.output_tokens[1]} output tokens, for "
        f"{size.minutes:g} minutes.",
        f"- Events: a replica SIGKILLed every {size.kill_every_s:g} s (in turn), a weight "
        f"pinned for 20 s every {size.weight_every_s:g} s, an API key added with "
        f"`fleet keys add` every {size.key_every_s:g} s; done: {kinds['kill']} kills, "
        f"{kinds['weight']} pins, {kinds['key']} keys"
        + (f"; {len(failed_events)} event(s) failed: "
           + "; ".join(e["what"] for e in failed_events) if failed_events else "") + ".",
        f"- Every {size.sample_every_s:g} s, from /proc: resident memory of each process "
        "group (nginx is its master and workers), open file descriptors of all of them, "
        "nginx's workers, and `du` of the runtime directory.", "",
        *targets_table(result.targets), "",
        "## Soak", "",
        "| load | requests | failed before the first byte | failed mid-stream | "
        "P50 TTFT | P99 TTFT | P99 E2E |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, summary, run in zip(("streamed", "not streamed"), soak, result.runs, strict=False):
        bfb = stats.failed_before_first_byte(run.records)
        mid = sum(1 for r in run.records if r.error_phase == stats.MID_STREAM)
        lines.append(f"| {label} | {summary['requests']:,} | {bfb} | {mid} | "
                     f"{_fmt_s(summary['ttft_s']['p50'])} | {_fmt_s(summary['ttft_s']['p99'])} | "
                     f"{_fmt_s(summary['e2e_s']['p99'])} |")
    lines += ["", f"Memory, minute {first['t'] / 60:.1f} against the end "
              f"(minute {last['t'] / 60:.1f}):", "",
              "| process | MiB then | MiB at the end | growth |", "| --- | ---: | ---: | ---: |"]
    for name in sorted(growth):
        g = growth[name]
        lines.append(f"| {name} | {first['rss_mib'][name]:.1f} | "
                     f"{last['rss_mib'].get(name, 0.0):.1f} | "
                     f"{'–' if g is None else f'{g:+.1%}'} |")
    peak_fds = max(s["fds"] for s in result.samples)
    lines += ["", f"Open file descriptors: {first['fds']} at minute {first['t'] / 60:.1f}, "
              f"{last['fds']} at the end, {peak_fds} at most. nginx workers shutting down "
              f"after a reload: at most {max(s['old_workers'] for s in result.samples)} at a "
              "sample.", "",
              "![memory](memory.png)", "", "![fds and workers](fds-workers.png)", "",
              "![disk](disk.png)", ""]
    lines += ["## nginx's master killed", "",
              "Under load (non-streamed, half the soak's rate), nginx's master SIGKILLed "
              f"{len(result.kills)} time(s), {size.gateway_kill_spacing_s:g} s apart. "
              "supervisord starts a new master through `router.gateway_launch`, which first "
              "sends the orphaned workers QUIT. A probe opens a new connection to the "
              f"gateway's `/health` every {1000 * 0.01:g} ms.", "",
              "| kill | probes | probes failed | longest time without an answer |",
              "| --- | ---: | ---: | ---: |"]
    for i, kill in enumerate(result.kills, 1):
        lines.append(f"| {i} (master {kill['master']}) | {kill['probes']} | {kill['failed']} | "
                     f"{kill['longest_gap_s'] * 1000:.0f} ms |")
    if result.kill_run is not None:
        run = result.kill_run
        bfb = sum(1 for r in run.records if r.error_phase is not None)
        lines += ["", f"The load in this part: {len(run.records):,} requests, {bfb} failed."]
    if result.storm_run is not None:
        storm = _summary(result.storm_run)
        peak = max(s["workers"] + s["old_workers"] for s in result.storm_samples)
        lines += ["", "## Reload storm", "",
                  f"A closed loop of {size.storm_streams} streamed completions of "
                  f"{size.storm_output_tokens[0]}-{size.storm_output_tokens[1]} tokens for "
                  f"{size.storm_s:g} s while nginx reloads every "
                  f"{size.storm_reload_every_s:g} s ({len(result.storm_reloads)} reloads): "
                  f"{storm['requests']:,} streams, {storm['failed']} failed, P99 E2E "
                  f"{_fmt_s(storm['e2e_s']['p99'])}. Worker processes at most {peak} "
                  f"(worker_processes is {result.worker_processes}); each reload starts a new "
                  "generation and the old ones leave as their streams end.", "",
                  "![storm](storm.png)", ""]
    return "\n".join(lines) + "\n"


def write(out: Path, result: SoakResult, command: str, machine: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    drawn = _plot_soak(out, result)
    if result.storm_samples:
        drawn.append(_plot_storm(out, result))
    (out / "result.json").write_text(json.dumps(
        {"command": command, "machine": machine, **to_json(result, _summary)},
        indent=2, default=str) + "\n", encoding="utf-8")
    (out / "README.md").write_text(markdown(result, command, machine), encoding="utf-8")
    return [out / "result.json", out / "README.md", *(out / name for name in drawn)]
