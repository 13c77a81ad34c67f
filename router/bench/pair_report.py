"""The gateway-pair drills' report: result.json and README.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router.bench.report import seen_s, targets_rows

# The targets (docs/production.md repeats them).
FAILOVER_TARGET_S = 3.0
OUT_OF_ROTATION_TARGET_S = 2.0

Target = tuple[str, str, bool | None]


def targets(result: dict[str, Any]) -> list[Target]:
    failed = result["failed_before_first_byte"]
    rows: list[Target] = [("0 requests failed before their first byte (SDK retries)",
                           str(failed), failed == 0)]
    if result["drill"] == "gateway-failover":
        answered = result["answered_again_s"]
        rows.insert(0, (f"the address answers from the other gateway within "
                        f"{FAILOVER_TARGET_S:g} s", seen_s(answered),
                        answered is not None and answered <= FAILOVER_TARGET_S))
        rows.append(("no flap back once the first gateway returns",
                     f"{result['flaps']} move(s) after the failover", result["flaps"] == 0))
        return rows
    for gateway in ("gw-a", "gw-b"):
        out = result[f"{gateway}_out_of_rotation_s"]
        rows.insert(0, (f"{gateway}: the host's replicas out of rotation within "
                        f"{OUT_OF_ROTATION_TARGET_S:g} s", seen_s(out),
                        out is not None and out <= OUT_OF_ROTATION_TARGET_S))
    return rows


KEY_FAN_OUT_TARGET_S = 2.0


def admin_targets(admin: dict[str, Any]) -> list[Target]:
    fan = admin["key_fan_out"]["works_after_s"]
    diverged = admin["diverged"]
    return [(f"a key added on one gateway works through the other within "
             f"{KEY_FAN_OUT_TARGET_S:g} s", seen_s(fan),
             fan is not None and fan <= KEY_FAN_OUT_TARGET_S),
            ("`fleet status` flags a deliberately diverged pair",
             "; ".join(diverged["status_flagged"]) or "nothing flagged",
             bool(diverged["status_flagged"]))]


def _admin_lines(admin: dict[str, Any]) -> list[str]:
    fan, diverged, lat = admin["key_fan_out"], admin["diverged"], admin["latency"]
    return [
        "## Admin actions and added latency across the pair", "",
        f"- `fleet keys add` on {fan['added_on']} (the command took "
        f"{seen_s(fan.get('command_s'))}, its reload included): the key answered 200 through "
        f"{fan['works_through']}'s own address {seen_s(fan['works_after_s'])} after the "
        "command started (polled every 50 ms).",
        "- With gw-b's controller stopped, `fleet keys add` on gw-a said: "
        f"{diverged['add_refused'] or 'nothing (it was not refused)'}.",
        "- `fleet status` on gw-a then said: " + ("; ".join(diverged["status_flagged"])
                                                  or "nothing") + ".",
        "- After `fleet keys push` on gw-a it said: " + ("; ".join(diverged["after_push"])
                                                          or "the pair agrees") + ".",
        f"- Added latency: {lat['requests']} one-token answers through the virtual IP and "
        f"as many straight from {lat['replica']}, interleaved, each on a kept-alive "
        f"connection from the client host: p50 {lat['pair_p50_ms']} ms against "
        f"{lat['direct_p50_ms']} ms ({lat['added_p50_ms']:+} ms), p99 {lat['pair_p99_ms']} "
        f"ms against {lat['direct_p99_ms']} ms ({lat['added_p99_ms']:+} ms).",
        "", *targets_rows(admin_targets(admin)), "",
    ]


def _failover_lines(result: dict[str, Any]) -> list[str]:
    kill = ("its nginx killed (SIGKILL of master and workers; the start supervisord then "
            "made was stopped, so it stayed down for the hold)" if result["kill"] == "nginx"
            else "its link pulled (the bridge's end of its veth down)")
    timeline = ", ".join(f"{at:+.2f} s {held or 'nobody'}"
                         for at, held in result["holder_timeline"])
    return [
        f"- {result['active']}, which held the address, had {kill} at 0 s; it was put back "
        "after the hold.",
        f"- The address moved to {result['backup']} after {seen_s(result['address_moved_s'])} "
        f"(polled every 50 ms); the first new connection after the move streamed "
        f"{seen_s(result['answered_again_s'])} after the kill.",
        f"- {result['active']} announced BACKUP {seen_s(result['back_as_backup_s'])} after it "
        f"was put back; the address moved {result['flaps']} time(s) after the failover.",
        f"- Who held the address (seconds from the kill): {timeline}.",
    ]


def _host_loss_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"- {result['host']}'s link was pulled at 0 s with its replicas "
             f"{', '.join(result['replicas'])} serving, and put back after the hold."]
    for gateway in ("gw-a", "gw-b"):
        lines.append(f"- {gateway} stopped routing to them after "
                     f"{seen_s(result[f'{gateway}_out_of_rotation_s'])} and routed to them "
                     f"again {seen_s(result[f'{gateway}_back_s'])} after the link was back "
                     "(its upstream file, which the controller writes before it reloads).")
    return lines


def write(out: Path, results: list[dict[str, Any]], command: str,
          machine: dict[str, Any], admin: dict[str, Any] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "result.json"
    result_path.write_text(json.dumps({"command": command, "machine": machine,
                                       "runs": results, "admin": admin}, indent=2) + "\n",
                           encoding="utf-8")
    lines = [f"# Drill: {results[0]['drill']}", "", f"Repeat with `{command}` (as root: the "
             "hosts are network namespaces).", "",
             f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
             f"{machine['memory_gib']} GiB, Python {machine['python']}; every host of the lab "
             "(two gateways, two replica hosts of two simulated replicas each, the client) "
             "runs on it.", ""]
    for result in results:
        title = (f"kill: {result['kill']}" if result["drill"] == "gateway-failover"
                 else f"host: {result['host']}")
        lines += [f"## {title}", "",
                  f"{result['requests']} streaming requests at {result['rate']:g}/s through "
                  f"the virtual IP: {result['ok']} completed, "
                  f"{result['failed_before_first_byte']} failed before their first byte, "
                  f"{result['streams_cut']} streams cut, {result['retried']} retried.", ""]
        lines += (_failover_lines(result) if result["drill"] == "gateway-failover"
                  else _host_loss_lines(result))
        if result["errors"]:
            lines.append(f"- What failed or cut requests saw: {', '.join(result['errors'])}.")
        if result["retried_after"]:
            lines.append("- What the attempts tried again saw: " + ", ".join(
                f"{reason} ({count})" for reason, count in sorted(result["retried_after"].items())
            ) + ".")
        lines += ["", *targets_rows(targets(result)), ""]
    if admin is not None:
        lines += _admin_lines(admin)
    readme = out / "README.md"
    readme.write_text("\n".join(lines), encoding="utf-8")
    return [result_path, readme]
