"""`fleet bench` and `fleet drill`: measurements that end in a report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import requests

from router import REPO_ROOT
from router.cli.common import announce, command_line, progress, spec_arg
from router.config.spec import load_spec
from router.disk.paths import RuntimePaths
from router.errors import ClusterError, SpecError
from router.runtime.state import ClusterState


def cmd_bench_run(args: argparse.Namespace) -> int:
    import asyncio

    from router.bench import load, report, stats

    if args.url is None:
        state = ClusterState.load(RuntimePaths(load_spec(args.spec).runtime_dir))
        if state is None:
            raise ClusterError("no cluster is running and no --url was given",
                               hint="start one with `fleet up`, or pass --url http://host:port")
        args.url = state.gateway_url
    if args.duration <= 0:
        raise SpecError("--duration must be above 0 seconds", hint="e.g. --duration 30")
    if args.rates:
        try:
            rates = [float(r) for r in args.rates.split(",")]
        except ValueError as exc:
            raise SpecError(f"--rate: {args.rates!r} is not a list of numbers",
                            hint="e.g. --rate 20 or --rate 10,20,40") from exc
        if any(r <= 0 for r in rates):
            raise SpecError("--rate: every rate must be above 0", hint="e.g. --rate 10,20,40")
        plans = [load.Arrivals("poisson", rate=r) for r in rates]
    else:
        if args.concurrency < 1:
            raise SpecError("--concurrency must be at least 1", hint="e.g. --concurrency 8")
        plans = [load.Arrivals("closed", concurrency=args.concurrency)]
    slo = stats.parse_slo(args.slo)
    key = os.environ.get("FLEET_API_KEY")
    model = args.model or _served_model(args.url, key)
    workload = load.Workload(
        model=model, chat=not args.completions, stream=not args.no_stream,
        prompt_words=load.parse_range(args.prompt_words, "--prompt-words"),
        output_tokens=load.parse_range(args.output_tokens, "--output-tokens"),
        prompts=load.load_prompts(args.prompts) if args.prompts else (), seed=args.seed)
    entries, runs = [], []
    for arrivals in plans:
        progress(f"{arrivals.describe()} for {args.duration:g}s against {args.url}")
        result = asyncio.run(load.run(args.url, workload, arrivals, args.duration, key,
                                      load.terminal_progress(args.duration)))
        print(file=sys.stderr)
        summary = stats.summarize(result.records, result.duration_s, slo)
        entries.append(report.result_entry(arrivals, workload, result, summary))
        runs.append((arrivals.describe(), result))
        progress(f"{summary['succeeded']:,} ok, {summary['failed']:,} failed, "
                  f"{summary['request_throughput']:,.1f} req/s, "
                  f"E2E p99 {summary['e2e_s']['p99'] or 0:.3f}s")
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / args.name
    announce(report.write(out, args.name, command_line(args), load.machine(), entries, runs), [])
    return 0


def cmd_bench_scenario(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from router.bench import load, scenario_report, scenarios

    scenario = scenarios.lookup(args.scenario)
    contenders = tuple(c for c in (args.contenders or "").split(",") if c)
    scenarios.check_contenders(scenario, contenders)
    for flag, value, least in (("--warmup", args.warmup, 0), ("--measure", args.measure, 1)):
        if value is not None and value < least:
            raise SpecError(f"{flag} must be {least} seconds or more", hint=f"e.g. {flag} 60")
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / args.scenario
    work = Path(tempfile.mkdtemp(prefix=f"fleet-{args.scenario}-"))
    try:
        result = scenarios.run_scenario(scenario, work, args.tiny, progress, args.seed,
                                       warmup_s=args.warmup, measure_s=args.measure,
                                       contenders=contenders)
    finally:
        if args.keep_work:
            progress(f"fleet specs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    announce(scenario_report.write(out, scenario, result, command_line(args), load.machine()),
              result.targets)
    return 0


def cmd_bench_soak(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from dataclasses import replace

    from router.bench import load, soak, soak_report

    size = soak.TINY if args.tiny else soak.FULL
    if args.minutes is not None:
        if args.minutes <= 0:
            raise SpecError("--minutes must be more than 0", hint="e.g. --minutes 30")
        size = replace(size, minutes=args.minutes,
                       growth_from_s=min(size.growth_from_s, args.minutes * 60 / 6))
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / "soak"
    work = Path(tempfile.mkdtemp(prefix="fleet-soak-"))
    try:
        result = soak.run_soak(work, size, progress)
    finally:
        if args.keep_work:
            progress(f"the fleet's spec and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    announce(soak_report.write(out, result, command_line(args), load.machine()), result.targets)
    return 0


def cmd_bench_trace(args: argparse.Namespace) -> int:
    import asyncio

    from router.bench import pace_trace

    if args.duration <= 0:
        raise SpecError("--duration must be more than 0 seconds", hint="e.g. --duration 600")
    spec = load_spec(args.spec)
    state = ClusterState.load(RuntimePaths(spec.runtime_dir))
    if state is None:
        raise ClusterError(f"no cluster is running from {spec.runtime_dir}",
                           hint="start it with `fleet up`, or pass the --spec it runs from")
    urls = {r.name: r.url for r in state.replicas}
    progress(f"probing {len(urls)} replicas every {spec.controller.pace.interval_s:g}s for "
             f"{args.duration:g}s into {args.out}")
    rounds = asyncio.run(pace_trace.record(urls, state.served_model_name, spec.controller.pace,
                                           args.duration, args.out))
    replayed = pace_trace.replay(pace_trace.load_trace(args.out), spec.controller)
    progress(f"{rounds} rounds; replayed through the controller: "
             f"{replayed.weight_changes} weight change(s), {len(replayed.moves)} move(s) "
             "of the pace test")
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    from router.bench import drill, drill_report, load

    if args.fault == "rollout":
        return _rollout_drill(args)
    if args.fault in PAIR_DRILLS:
        return _pair_drill(args)
    if args.to is not None:
        raise SpecError("--to is read only by `fleet drill rollout`",
                        hint=f"`fleet drill {args.fault} REPLICA` injects a fault; leave --to out")
    if args.replica is None:
        raise SpecError(f"`fleet drill {args.fault}` needs the replica to fault",
                        hint=f"e.g. fleet drill {args.fault} replica-1 (see `fleet status`)")
    for flag, value in (("--before", args.before), ("--hold", args.hold), ("--after", args.after)):
        if value < 0:
            raise SpecError(f"{flag} must be 0 seconds or more", hint=f"e.g. {flag} 10")
    plan = drill.DrillPlan(fault=args.fault, replica=args.replica, rate=args.load,
                           before_s=args.before, hold_s=args.hold, after_s=args.after,
                           recover_timeout_s=args.recover_timeout, static=args.static,
                           output_tokens=load.parse_range(args.output_tokens, "--output-tokens"))
    spec = load_spec(args.spec)
    result = drill.run_drill(spec, plan, os.environ.get("FLEET_API_KEY"), progress)
    name = f"drill-{args.fault}-{result.engine}" + ("-static" if args.static else "")
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / name
    announce(drill_report.write(out, result, command_line(args), load.machine()), result.targets)
    return 0


def _rollout_drill(args: argparse.Namespace) -> int:
    from router.bench import load, rollout, rollout_report

    if args.to is None or args.replica is not None:
        raise SpecError("`fleet drill rollout` takes the spec to change to, and no replica",
                        hint="fleet drill rollout --to NEW.yaml --spec RUNNING.yaml")
    for flag, value in (("--before", args.before), ("--after", args.after)):
        if value < 0:
            raise SpecError(f"{flag} must be 0 seconds or more", hint=f"e.g. {flag} 10")
    if args.streams is not None and args.streams < 1:
        raise SpecError("--streams must be 1 or more", hint="e.g. --streams 64")
    plan = rollout.RolloutPlan(to_spec=args.to, rate=args.load, streams=args.streams or 0,
                               before_s=args.before, after_s=args.after,
                               output_tokens=load.parse_range(args.output_tokens,
                                                              "--output-tokens"),
                               prompt_words=load.parse_range(args.prompt_words, "--prompt-words"))
    result = rollout.run_rollout(load_spec(args.spec), plan, os.environ.get("FLEET_API_KEY"),
                                 progress)
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / f"drill-rollout-{result.engine}"
    announce(rollout_report.write(out, result, command_line(args), load.machine()),
             result.targets)
    return 0 if result.error is None else 1


PAIR_DRILLS = ("gateway-failover", "replica-host-loss")


def _pair_drill(args: argparse.Namespace) -> int:
    from router.bench import load, netlab, pair_drill, pair_report

    if args.replica is not None or args.to is not None or args.spec is not None:
        raise SpecError(f"`fleet drill {args.fault}` builds its own hosts and takes no "
                        "replica, --to or --spec",
                        hint=f"fleet drill {args.fault} --load 20")
    if args.kill is not None and args.fault != "gateway-failover":
        raise SpecError("--kill is read only by `fleet drill gateway-failover`",
                        hint="fleet drill gateway-failover --kill link")
    for flag, value in (("--before", args.before), ("--hold", args.hold), ("--after", args.after),
                        ("--load", args.load)):
        if value <= 0:
            raise SpecError(f"{flag} must be more than 0", hint=f"e.g. {flag} 10")
    why_not = netlab.available()
    if why_not is not None:
        raise ClusterError(f"`fleet drill {args.fault}` runs its hosts as network namespaces: "
                           f"{why_not}", hint="run it as root on a Linux machine with iproute2")
    times = pair_drill.DrillTimes(before_s=args.before, hold_s=args.hold, after_s=args.after)
    kills = [args.kill] if args.kill else list(pair_drill.GATEWAY_KILLS)
    results = []
    admin = None
    with pair_drill.running_lab(None, pair_drill.LabShape(), progress) as lab:
        if args.fault == "gateway-failover":
            admin = {"key_fan_out": pair_drill.key_fan_out(lab),
                     "diverged": pair_drill.diverged_pair(lab),
                     "latency": pair_drill.added_latency(lab, args.latency_requests,
                                                         lab.workdir / "latency.json")}
            progress(f"admin fan-out: {admin['key_fan_out']}")
            for kill in kills:
                results.append(pair_drill.gateway_failover(
                    lab, kill, args.load, times, lab.workdir / f"load-{kill}.jsonl", progress))
                pair_drill.settle(lab, progress)
        else:
            results.append(pair_drill.replica_host_loss(
                lab, args.load, times, lab.workdir / "load.jsonl", progress))
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / f"drill-{args.fault}"
    written = pair_report.write(out, results, command_line(args), load.machine(), admin)
    announce(written, [t for result in results for t in pair_report.targets(result)]
             + (pair_report.admin_targets(admin) if admin else []))
    return 0


def _served_model(url: str, key: str | None) -> str | None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        data = requests.get(f"{url}/v1/models", headers=headers, timeout=10).json()
        return str(data["data"][0]["id"])
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="measure the fleet: latency, throughput, goodput")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    pb = bench_sub.add_parser("run", help="load the gateway (or --url) and write a report to "
                                          "docs/benchmarks/NAME")
    spec_arg(pb)
    pb.add_argument("--url", help="what to load (default: the running cluster's gateway)")
    pb.add_argument("--name", default="run", help="report folder under docs/benchmarks")
    pb.add_argument("--out", type=Path, metavar="DIR", help="report folder (overrides --name)")
    load_mode = pb.add_mutually_exclusive_group()
    load_mode.add_argument("--rate", dest="rates", metavar="R[,R...]",
                           help="open loop: Poisson arrivals at R requests/s; a list sweeps")
    load_mode.add_argument("--concurrency", type=int, default=8,
                           help="closed loop: this many clients, each sending its next "
                                "request when the last one ends (default 8)")
    pb.add_argument("--duration", type=float, default=30.0, help="seconds per load level")
    pb.add_argument("--no-stream", action="store_true", help="non-streamed requests")
    pb.add_argument("--completions", action="store_true",
                    help="/v1/completions instead of /v1/chat/completions")
    pb.add_argument("--prompt-words", default="32", metavar="N|LOW-HIGH")
    pb.add_argument("--output-tokens", default="64", metavar="N|LOW-HIGH")
    pb.add_argument("--prompts", type=Path, metavar="FILE.jsonl",
                    help="prompts to draw from, one {\"prompt\": ...} per line")
    pb.add_argument("--slo", default="", metavar="ttft=2s,itl=50ms,e2e=30s",
                    help="goodput counts requests meeting all of these")
    pb.add_argument("--model", help="the model to ask for (default: the gateway's)")
    pb.add_argument("--seed", type=int, default=0)
    pb.set_defaults(func=cmd_bench_run)
    pb = bench_sub.add_parser(
        "scenario", help="llm-fleet and its baselines side by side on simulated fleets "
                         "(docs/benchmarks; one module each in router/bench/scenarios)")
    pb.add_argument("scenario", metavar="NAME",
                    help="the scenario, e.g. heterogeneous or stability (an unknown name "
                         "lists them all)")
    pb.add_argument("--warmup", type=float, metavar="S",
                    help="heterogeneous, homogeneous, stability: seconds of load left out of "
                         "the figures (default 45)")
    pb.add_argument("--measure", type=float, metavar="S",
                    help="heterogeneous, homogeneous, stability: seconds of load measured "
                         "(stability: per cell; default 90)")
    pb.add_argument("--contenders", metavar="LIST",
                    help="scenarios with contenders (heterogeneous, homogeneous, chat, "
                         "chat-hot): only these, comma-separated (an unknown one lists the "
                         "scenario's)")
    pb.add_argument("--out", type=Path, metavar="DIR",
                    help="report folder (default: docs/benchmarks/NAME)")
    pb.add_argument("--tiny", action="store_true",
                    help="seconds instead of minutes: proves the machinery, measures nothing")
    pb.add_argument("--keep-work", action="store_true",
                    help="keep the fleets' specs and logs (printed at the end)")
    pb.add_argument("--seed", type=int, default=0)
    pb.set_defaults(func=cmd_bench_scenario)

    pb = bench_sub.add_parser(
        "soak", help="a simulated fleet for 30 minutes at 70 %% of capacity with replicas "
                     "killed, weights pinned and keys added, then nginx's master killed and a "
                     "reload storm; memory, descriptors, workers and disk over time "
                     "(docs/benchmarks/soak)")
    pb.add_argument("--minutes", type=float, metavar="M", help="length of the soak (default 30)")
    pb.add_argument("--out", type=Path, metavar="DIR",
                    help="report folder (default: docs/benchmarks/soak)")
    pb.add_argument("--tiny", action="store_true",
                    help="seconds instead of minutes: proves the machinery, measures nothing")
    pb.add_argument("--keep-work", action="store_true",
                    help="keep the fleet's spec and logs (printed at the end)")
    pb.set_defaults(func=cmd_bench_soak)

    pb = bench_sub.add_parser(
        "trace", help="record the controller's pace probe inputs from the running fleet, one "
                      "JSON line a round, and say what the controller would do with them")
    spec_arg(pb)
    pb.add_argument("--duration", type=float, default=300.0, metavar="SECONDS",
                    help="how long to record (default 300)")
    pb.add_argument("--out", type=Path, required=True, metavar="FILE", help="the trace (JSONL)")
    pb.set_defaults(func=cmd_bench_trace)

    p = sub.add_parser("drill", help="inject a fault into one replica, or apply a new spec, "
                                     "under load and report what clients saw")
    spec_arg(p)
    p.add_argument("fault", choices=("kill", "hang", "slow", "restart", "rollout",
                                      *PAIR_DRILLS),
                   help="kill: SIGKILL; restart: SIGTERM; hang: stop answering; "
                        "slow: a third of the speed (vLLM: its engine stopped two thirds "
                        "of the time); rollout: `fleet apply --spec` the --to file under "
                        "load; gateway-failover, replica-host-loss: a gateway pair and "
                        "replica hosts built as network namespaces (root), the active "
                        "gateway or a replica host pulled under load")
    p.add_argument("--latency-requests", type=int, default=400, metavar="N",
                   help="gateway-failover: short answers through the pair and straight from "
                        "a replica, each, for the added latency (default 400)")
    p.add_argument("--kill", choices=("nginx", "link"),
                   help="gateway-failover: kill only nginx or only the link (default: both, "
                        "one after the other)")
    p.add_argument("replica", nargs="?", help="e.g. replica-1 (see `fleet status`); "
                                              "none for rollout")
    p.add_argument("--to", type=Path, metavar="FILE",
                   help="rollout: the spec to apply to the running cluster")
    p.add_argument("--streams", type=int, metavar="N",
                   help="rollout: N clients streaming back to back instead of --load's "
                        "Poisson arrivals")
    p.add_argument("--output-tokens", default="32-64", metavar="N[-M]",
                   help="output tokens per request (default 32-64)")
    p.add_argument("--prompt-words", default="32", metavar="N[-M]",
                   help="rollout: prompt words per request (default 32)")
    p.add_argument("--load", type=float, default=10.0, metavar="RATE",
                   help="background Poisson load, requests/s (default 10)")
    p.add_argument("--before", type=float, default=10.0, metavar="S",
                   help="seconds of load before the fault")
    p.add_argument("--hold", type=float, default=20.0, metavar="S",
                   help="hang and slow: how long the fault lasts")
    p.add_argument("--after", type=float, default=10.0, metavar="S",
                   help="seconds of load after the replica is back")
    p.add_argument("--recover-timeout", type=float, default=180.0, metavar="S",
                   help="kill and restart: how long to wait for the replica to come back")
    p.add_argument("--static", action="store_true",
                   help="pin every replica at the base weight for the drill: static "
                        "least_conn, the baseline for the controller's figures")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="report folder (default: docs/benchmarks/drill-FAULT-ENGINE, "
                        "with -static after it for --static)")
    p.set_defaults(func=cmd_drill)

