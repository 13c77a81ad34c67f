"""Running a cluster: up, down, status, logs, one replica in the foreground, a chat."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, NoReturn

import requests

from router.cli.common import progress, spec_arg, table
from router.config.spec import ClusterSpec, load_spec
from router.config.topology import own_listing_url
from router.disk import keys
from router.disk.paths import RuntimePaths
from router.errors import ClusterError, SpecError
from router.fleet_status import AdmissionView, BudgetsView
from router.host.machine import detect
from router.render.programs import replica_program
from router.runtime import apply, cluster, pair
from router.runtime.health import holds_address, probe
from router.runtime.state import ClusterState


def cmd_up(args: argparse.Namespace) -> int:
    if args.prepare_only:
        cluster.prepare_only(args.spec, progress)
        return 0
    if args.foreground:
        cluster.up_foreground(args.spec, progress)
    plan = cluster.up(args.spec, progress)
    print(_status_table(cluster.status(plan.spec)))
    print(f"\ngateway: {plan.gateway_url}/v1  (model '{plan.engine.served_model_name}')")
    return 0


def _status_table(status: cluster.ClusterStatus) -> str:
    controlled = {r.name: r for r in status.controller.replicas} if status.controller else {}
    rows = [["REPLICA", "DEVICE", "URL", "STATE", "PID", "HEALTH", "WEIGHT", "CACHE HITS",
             "SPEC", "REASON"]]
    for r in status.replicas:
        health = str(r.health.status) if r.health.status else (r.health.error or "-")
        view = controlled.get(r.name)
        weight = "-" if view is None or view.weight is None else (
            str(view.weight) if view.in_rotation else "out")
        hits = None if view is None else view.signal("prefix_hit_rate")
        rows.append([r.name, r.device, r.url, r.state, str(r.pid or "-"), health, weight,
                     "-" if hits is None else f"{hits:.0%}", r.generation or "-",
                     (view.reason if view is not None else None) or "-"])
    others = [p for p in status.processes if not p.name.startswith("replica-")]
    for p in others:
        rows.append([p.name, "-", "-", p.state, str(p.pid or "-"), "-", "-", "-", "-", "-"])
    return table(rows)


def cmd_status(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    status = cluster.status(spec)
    if args.json:
        shown = status.to_json()
        if spec.ha.enabled and status.running:
            shown["pair"] = _pair_view(spec, status)
        print(json.dumps(shown, indent=2))
        return 0 if status.running else 1
    if status.unsupervised:
        print(_unsupervised_report(status))
        return 1
    if not status.running:
        print(f"no cluster is running from {spec.runtime_dir}")
        return 1
    print(_status_table(status))
    if status.rollout is not None:
        done = status.rollout.done
        print(f"\nfleet apply to spec {status.rollout.generation} under way: "
              f"{status.rollout.step}" + (f" (done: {', '.join(done)})" if done else ""))
    admission = status.controller.admission if status.controller else None
    if admission is not None:
        print("\n" + _admission_line(admission))
    budgets = status.controller.budgets if status.controller else None
    if budgets is not None:
        print("\n" + _budgets_lines(budgets))
    paths = RuntimePaths(spec.runtime_dir)
    for r in status.replicas:
        if r.state in ("FATAL", "BACKOFF"):
            print(f"\n{r.name} is {r.state}: "
                  + ("supervisord gave up after repeated failed starts"
                     if r.state == "FATAL" else "it exits as it starts; supervisord retries")
                  + f"\n  last log line: {cluster.last_log_line(paths.log(r.name))}"
                  f"\n  fix the cause (`fleet logs {r.name}`), then `fleet restart {r.name}`")
    gw = status.gateway_health
    if spec.topology.role == "replicas":
        listing = probe(own_listing_url(spec.topology))
        print(f"\nrole replicas: no gateway here; the listing gateway hosts read "
              f"({spec.topology.listen}:{spec.topology.listing_port}): "
              f"{listing.status or listing.error}")
    else:
        print(f"\ngateway: {status.gateway_url}  /health: "
              f"{gw.status if gw and gw.status else (gw.error if gw else '-')}")
    if spec.ha.enabled:
        print(_pair_lines(spec, _pair_view(spec, status)))
    if status.disk is not None:
        disk = status.disk
        print(f"disk: {spec.runtime_dir} holds {_size(disk.total)} (logs {_size(disk.logs)}, "
              f"Prometheus {_size(disk.prometheus)}; bounded by logs.* and "
              "prometheus.retention_size)")
    return 0


def _pair_view(spec: ClusterSpec, status: cluster.ClusterStatus) -> dict[str, Any]:
    """This gateway of a pair beside its peers: who holds the address, what differs."""
    paths = RuntimePaths(spec.runtime_dir)
    assert spec.ha.virtual_ip is not None
    address = spec.ha.virtual_ip.split("/", 1)[0]
    view: dict[str, Any] = {"virtual_ip": address, "held_here": holds_address(address),
                            "peers": []}
    if status.controller is None:
        view["error"] = "this gateway's controller does not answer; nothing was compared"
        return view
    digest = keys.store_digest(keys.load_store(paths.api_keys))
    view["peers"] = [{"peer": peer.peer,
                      "differences": pair.differences(status.controller, digest, peer,
                                                      spec.controller.min_weight_change)}
                     for peer in pair.peer_views(spec, paths)]
    return view


def _pair_lines(spec: ClusterSpec, view: dict[str, Any]) -> str:
    lines = [f"pair: virtual IP {view['virtual_ip']} "
             + ("held by this gateway" if view["held_here"] else "held elsewhere (the peer, "
                                                                  "or nobody)")]
    if "error" in view:
        lines.append(f"  {view['error']}")
    for peer in view["peers"]:
        found = peer["differences"]
        lines.append(f"  peer {peer['peer']}: " + (
            "agrees (keys, drains, pins, rotation, weights)" if not found else
            "DIFFERS\n" + "\n".join(f"    {line}" for line in found)))
    return "\n".join(lines)


def _budgets_lines(budgets: BudgetsView) -> str:
    over = [k for k in budgets.keys if k.over]
    lines = [f"token budgets: {len(budgets.keys)} keys with one, {len(over)} over "
             f"(tokens in the last {budgets.window_s:g}s)"]
    lines += [f"  {k.name or k.key} ({k.key}): {k.used} of {k.budget}"
              + (f", OVER: 429 for {k.retry_after_s}s more" if k.over else
                 f", {k.in_flight_cap} in flight at most" if k.in_flight_cap else "")
              for k in budgets.keys]
    if budgets.error:
        lines.append(f"  counters: {budgets.error}")
    return "\n".join(lines)


def _admission_line(admission: AdmissionView) -> str:
    wait = ("unknown" if admission.waiting is None else
            "no drain" if admission.queue_wait_s is None else f"{admission.queue_wait_s:g}s")
    classes = ", ".join(
        f"{c.name} {'SHED (Retry-After ' + str(c.retry_after_s) + 's)' if c.shed else 'admitted'}"
        f" at {c.limit_s:g}s" for c in admission.classes)
    share = admission.fair_share
    parts = [f"queue wait: {wait}", classes] if classes else [f"queue wait: {wait}"]
    if share is not None:
        parts.append(f"fair share: {share.per_key} in flight per key ({share.keys_in_use} keys "
                     f"in use, {share.slots} slots)" if share.per_key is not None
                     else "fair share: no cap")
    line = "; ".join(parts)
    return line + (f"\n  Prometheus: {admission.error}" if admission.error else "")


def _unsupervised_report(status: cluster.ClusterStatus) -> str:
    gw = status.gateway_health
    rows = [["PROGRAM", "PID", "COMMAND"]]
    rows += [[p.program, str(p.pid), p.command[:80]] for p in status.unsupervised]
    return "\n".join([
        "supervisord is not running (killed or crashed), but these processes it started "
        "still run, unsupervised:",
        table(rows),
        f"\ngateway: {status.gateway_url}  /health: "
        f"{gw.status if gw and gw.status else (gw.error if gw else '-')}",
        "Nothing restarts them if they die. `fleet down` stops them (streams finish first); "
        "then `fleet up`.",
    ])


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"


def cmd_down(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    left = cluster.down(spec, progress)
    if left:
        print(f"killed {len(left)} process(es) that outlived supervisord: {left}",
              file=sys.stderr)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    if args.dry_run:
        change, *_ = apply.plan_apply(args.spec)
        print("\n".join(change.describe()))
        return 2 if change.refused else 0
    outcome = apply.apply(args.spec, progress)
    if outcome.rolls:
        rows = [["REPLICA", "DRAIN", "CUT", "RESTART", "REJOIN", "SLOW START", "TOTAL"]]
        rows += [[r.name, f"{r.drain_s:.1f}s", str(r.cut), f"{r.restart_s:.1f}s",
                  f"{r.rejoin_s:.1f}s", f"{r.settle_s:.1f}s", f"{r.total_s:.1f}s"]
                 for r in outcome.rolls]
        print(table(rows))
    if not outcome.change.empty:
        print(f"applied in {outcome.seconds:.1f}s")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    cluster.restart(load_spec(args.spec), args.name, progress)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    paths = RuntimePaths(spec.runtime_dir)
    state = ClusterState.load(paths)
    known = [r.name for r in state.replicas] if state else []
    known += ["gateway", "log-rotation", "prometheus", "controller", "gpu-exporter",
              "nginx-exporter", "log-exporter", "nginx-error", "gateway-access", "supervisord"]
    if args.name not in known:
        raise ClusterError(f"no log named {args.name!r}", hint="choose one of: " + ", ".join(known))
    path = paths.log(args.name)
    if not path.exists():
        raise ClusterError(f"{path} does not exist yet", hint="has the cluster been started?")
    tail = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + [str(path)]
    try:
        return subprocess.call(tail)
    except KeyboardInterrupt:
        return 0


def cmd_replica_exec(args: argparse.Namespace) -> NoReturn:
    """Become replica N as the spec plans it (systemd's llm-fleet-replica@N)."""
    spec = load_spec(args.spec)
    plan = cluster.make_plan(spec)
    if not 0 <= args.index < len(plan.replicas):
        raise SpecError(f"no replica {args.index}: the spec plans {len(plan.replicas)}",
                        hint=f"choose 0 to {len(plan.replicas) - 1}")
    replica = plan.replicas[args.index]
    if replica.external:
        raise SpecError(f"{replica.name} is external: something else runs it",
                        hint="engine: external replicas are not started by llm-fleet")
    paths = RuntimePaths(spec.runtime_dir)
    paths.create()
    program = replica_program(replica, paths, detect())
    progress(f"{replica.name} on {replica.device}, port {replica.port}")
    os.execve(program.argv[0], list(program.argv), {**os.environ, **program.env})


def cmd_chat(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    state = ClusterState.load(RuntimePaths(spec.runtime_dir))
    if state is None:
        raise ClusterError("no cluster state found", hint="start one with `fleet up`")
    if spec.model.runner != "generate":
        raise SpecError(f"model.runner is {spec.model.runner}: the model answers "
                        "/v1/embeddings, not chat",
                        hint=f"ask it with: curl {state.gateway_url}/v1/embeddings "
                             "-H 'Content-Type: application/json' "
                             f"-d '{{\"model\": \"{state.served_model_name}\", "
                             "\"input\": \"hello\"}'")
    url = state.gateway_url + "/v1/chat/completions"
    body = {"model": state.served_model_name, "max_tokens": args.max_tokens,
            "messages": [{"role": "user", "content": args.message}]}
    key = os.environ.get("FLEET_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = requests.post(url, json=body, headers=headers, timeout=args.timeout)
    except requests.RequestException as exc:
        raise ClusterError(f"the gateway at {url} did not answer: {exc}",
                           hint="check `fleet status`") from exc
    if response.status_code == 401:
        raise ClusterError("the gateway wants an API key (auth.enabled is true)",
                           hint="set FLEET_API_KEY to a key from `fleet keys add NAME`")
    if response.status_code != 200:
        raise ClusterError(f"gateway answered {response.status_code}: {response.text.strip()}")
    answer = response.json()["choices"][0]["message"]["content"]
    replica = response.headers.get("X-Fleet-Replica", "?")
    print(f"[{replica}] {answer.strip()}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start the cluster and wait until it serves")
    spec_arg(p)
    p.add_argument("--foreground", action="store_true",
                   help="check the configs, then run supervisord in the foreground "
                        "(containers); does not wait for health")
    p.add_argument("--prepare-only", action="store_true",
                   help="render and check the configs and write the runtime state, start "
                        "nothing (systemd's llm-fleet-prepare.service)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("apply", help="change the running cluster to a spec: gateway-only "
                                     "settings by a reload, replicas one at a time with "
                                     "nothing lost")
    spec_arg(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print what would reload, restart and roll, in order, and change "
                        "nothing (exits 2 when the change is refused)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("down", help="stop every process of the cluster")
    spec_arg(p)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="replicas, processes and health")
    spec_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("restart", help="restart one replica or program (also one supervisord "
                                       "gave up on) and wait until it is back; nothing else "
                                       "is touched")
    spec_arg(p)
    p.add_argument("name", metavar="NAME", help="replica-0, prometheus, ... (see `fleet status`)")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("logs", help="show the log of a replica or another process")
    spec_arg(p)
    p.add_argument("name", metavar="NAME", help="replica-0, gateway, prometheus, ...")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("replica", help="run one replica in the foreground (systemd units)")
    replica_sub = p.add_subparsers(dest="replica_command", required=True, metavar="SUBCOMMAND")
    pp = replica_sub.add_parser("exec", help="become replica N: its vLLM, pinned as planned")
    pp.add_argument("index", type=int, metavar="N")
    spec_arg(pp)
    pp.set_defaults(func=cmd_replica_exec)

    p = sub.add_parser("chat", help="send one chat message through the gateway (with keys on, "
                                    "the key comes from FLEET_API_KEY)")
    spec_arg(p)
    p.add_argument("message")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_chat)
