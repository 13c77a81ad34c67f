"""The `fleet` command line.

Errors reach the user as one `error:` line and one `hint:` line, with an exit
status per error class (see router.errors); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import requests

from router import __version__, cluster, compose, gateway_reload, keys, systemd
from router import model as model_store
from router.devices import discover
from router.errors import ClusterError, FleetError, SpecError
from router.plan import choose_engine
from router.render import replica_program, write_checked
from router.runtime import RuntimePaths, read_state, write_atomic
from router.spec import (
    EXAMPLE_SPEC,
    REPO_ROOT,
    SIM_SERVED_MODEL_NAME,
    ClusterSpec,
    load_spec,
    resolve_engine_settings,
)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _spec_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, default=None, metavar="FILE",
                        help=f"cluster spec YAML (default: {EXAMPLE_SPEC})")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def cmd_up(args: argparse.Namespace) -> int:
    if args.prepare_only:
        cluster.prepare_only(args.spec, _progress)
        return 0
    if args.foreground:
        cluster.up_foreground(args.spec, _progress)
    plan = cluster.up(args.spec, _progress)
    print(_status_table(cluster.status(plan.spec)))
    print(f"\ngateway: {plan.gateway_url}/v1  (model '{plan.engine.served_model_name}')")
    return 0


def _status_table(status: cluster.ClusterStatus) -> str:
    controlled = {r["name"]: r for r in (status.controller or {}).get("replicas", [])}
    rows = [["REPLICA", "DEVICE", "URL", "STATE", "PID", "HEALTH", "WEIGHT", "REASON"]]
    for r in status.replicas:
        health = str(r.health.status) if r.health.status else (r.health.error or "-")
        view = controlled.get(r.name, {})
        weight = "-" if view.get("weight") is None else (
            str(view["weight"]) if view.get("in_rotation") else "out")
        rows.append([r.name, r.device, r.url, r.state, str(r.pid or "-"), health, weight,
                     view.get("reason") or "-"])
    others = [p for p in status.processes if not p.name.startswith("replica-")]
    for p in others:
        rows.append([p.name, "-", "-", p.state, str(p.pid or "-"), "-", "-", "-"])
    return _table(rows)


def cmd_status(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    status = cluster.status(spec)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
        return 0 if status.running else 1
    if not status.running:
        print(f"no cluster is running from {spec.runtime_dir}")
        return 1
    print(_status_table(status))
    gw = status.gateway_health
    print(f"\ngateway: {status.gateway_url}  /health: "
          f"{gw.status if gw and gw.status else (gw.error if gw else '-')}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    left = cluster.down(spec, _progress)
    if left:
        print(f"killed {len(left)} process(es) that outlived supervisord: {left}",
              file=sys.stderr)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    paths = RuntimePaths(spec.runtime_dir)
    state = read_state(paths)
    known = [r["name"] for r in state["replicas"]] if state else []
    known += ["gateway", "prometheus", "controller", "gpu-exporter", "nginx-exporter",
              "log-exporter", "nginx-error", "gateway-access", "supervisord"]
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


def cmd_render(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.target == "compose":
        return _render_compose(spec, args)
    if args.gpus is not None:
        raise SpecError("--gpus is read by `fleet render compose` only",
                        hint="fleet render compose --gpus 4")
    if args.out is None:
        raise SpecError(f"fleet render {args.target} needs --out DIR",
                        hint=f"fleet render {args.target} --out /tmp/llm-fleet-configs")
    if args.target == "systemd":
        for path in systemd.write_units(spec, args.spec, args.out.resolve()):
            print(path)
        return 0
    # Rendering needs no prepared model: the configs name where it would load from.
    plan = cluster.make_plan(spec, require_model=False)
    out = args.out.resolve()
    rendered = write_checked(plan, RuntimePaths(out, config_override=out))
    for name in sorted(rendered.files):
        print(out / name)
    return 0


def _render_compose(spec: ClusterSpec, args: argparse.Namespace) -> int:
    if args.gpus is None:
        raise SpecError("fleet render compose needs --gpus N (one replica per GPU)",
                        hint="fleet render compose --gpus 4")
    out = (args.out or REPO_ROOT).resolve()
    rendered = compose.render_compose(spec, args.gpus, out)
    for path, text in ((out / compose.COMPOSE_FILE, rendered.compose),
                       (out / compose.GATEWAY_SPEC, rendered.gateway_spec)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        print(path)
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
    program = replica_program(replica, paths)
    _progress(f"{replica.name} on {replica.device}, port {replica.port}")
    os.execve(program.argv[0], list(program.argv), {**os.environ, **program.env})


def cmd_model_prepare(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    engine = args.engine or choose_engine(spec, discover())
    settings = resolve_engine_settings(spec, engine)
    if engine == "sim":
        _progress("a simulated fleet needs no model files")
        return 0
    if engine == "external":
        _progress("external replicas hold their own model; prepare it where they run "
                  "(fleet model prepare --engine gpu)")
        return 0
    dummy = args.dummy or settings.dummy
    _progress(f"preparing {'a config-only ' if dummy else ''}{settings.model} "
              f"for the {engine} engine")
    folder = model_store.prepare(settings.model, spec.model.cache_dir, force=args.force,
                                 dummy=dummy)
    print(folder)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from router import doctor

    spec = load_spec(args.spec)
    inventory = discover()
    note = doctor.engine_note(spec, inventory)
    if note:
        print(f"note: {note}")
    verdicts = doctor.diagnose(spec, doctor.gather(spec, inventory=inventory))
    for verdict in verdicts:
        print("\n".join(verdict.lines()))
    failed = [v for v in verdicts if v.status == "FAIL"]
    print(f"\n{len(failed)} problem(s)" if failed else "\nready for `fleet up`")
    return 1 if failed else 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from router import bundle

    target = bundle.TARGETS[args.target]
    if args.part_size_mib <= 0:
        raise SpecError("--part-size-mib must be above 0",
                        hint=f"e.g. --part-size-mib {bundle.DEFAULT_PART_MIB}")
    _progress(f"bundle for {target.description}")
    manifest = bundle.build(
        target, args.out.resolve(), int(args.part_size_mib * bundle.MiB),
        with_model=not args.no_model, progress=_progress,
        prepare_model=lambda model, cache: model_store.prepare_dummy(model, cache))
    for part in manifest.parts:
        print(args.out / part.name)
    print(args.out / bundle.MANIFEST)
    _progress(f"{len(manifest.parts)} part(s), {manifest.archive_bytes / bundle.MiB:.0f} MiB: "
              f"{len(manifest.wheels)} wheels, {len(manifest.debs)} Debian packages"
              + (f", {manifest.model}" if manifest.model else ""))
    _progress(f"on the host: bash {args.out}/install.sh --prefix /opt/llm-fleet")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    state = read_state(RuntimePaths(spec.runtime_dir))
    if state is None:
        raise ClusterError("no cluster state found", hint="start one with `fleet up`")
    url = state["gateway_url"] + "/v1/chat/completions"
    body = {"model": state["served_model_name"], "max_tokens": args.max_tokens,
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


def cmd_sim_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from router.sim.config import SimSettings
    from router.sim.run import serve

    def given(**values: object) -> dict[str, object]:
        # Only what the user passed: every default lives in SimSettings.
        return {k: v for k, v in values.items() if v is not None}

    try:
        data = (SimSettings.model_validate_json(args.settings) if args.settings
                else SimSettings()).model_dump()
        data.update(given(speed=args.speed, max_num_seqs=args.max_num_seqs,
                          max_model_len=args.max_model_len, seed=args.seed,
                          kv_capacity_tokens=args.kv_capacity_tokens,
                          mean_output_tokens=args.mean_output_tokens))
        data["faults"].update(given(startup_delay_s=args.startup_delay, slow=args.slow,
                                    error_rate=args.error_rate, hang=args.hang or None))
        settings = SimSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "--settings"
        raise SpecError(f"{where}: {first['msg']} (got {first.get('input')!r})",
                        hint="see `fleet sim serve --help` for the options") from exc
    serve(settings, args.host, args.port, args.model)
    return 0


def cmd_controller_run(args: argparse.Namespace) -> int:
    from router.controller.main import run

    run(load_spec(args.spec))
    return 0


def _admin(args: argparse.Namespace, path: str, body: dict[str, object] | None = None) -> int:
    spec = load_spec(args.spec)
    paths = RuntimePaths(spec.runtime_dir)
    state = read_state(paths)
    if state is None:
        raise ClusterError("no cluster is running", hint="start one with `fleet up`")
    result = cluster.controller_call(paths, state, "POST", path, body, required=True)
    assert result is not None
    decision = result["decision"]
    print(f"{args.replica}: {decision['reasons'].get(args.replica, '')}"
          f" ({'applied' if decision['applied'] else decision['why']})")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    return _admin(args, f"/replicas/{args.replica}/drain")


def cmd_undrain(args: argparse.Namespace) -> int:
    return _admin(args, f"/replicas/{args.replica}/undrain")


def cmd_pin(args: argparse.Namespace) -> int:
    if args.clear == (args.weight is not None):
        raise SpecError("give either a WEIGHT (1-100) or --clear",
                        hint="e.g. `fleet pin replica-1 20 --for 600` or `fleet pin replica-1 "
                             "--clear`")
    return _admin(args, f"/replicas/{args.replica}/weight",
                  {"weight": args.weight, "ttl_s": args.for_s})


def _apply_keys(spec: ClusterSpec, store: keys.KeyStore) -> str:
    """Make ``store`` the gateway's keys; say how it took effect. The store is
    saved only once the running gateway accepted it, so a failed reload
    leaves keys and gateway as they were."""
    paths = RuntimePaths(spec.runtime_dir)
    rendered = keys.render_keys_conf(store)
    if gateway_reload.gateway_pid(paths) is not None:
        seconds = gateway_reload.apply_gateway_file(
            paths, paths.api_keys_conf, rendered.text, version=rendered.version,
            version_url=gateway_reload.status_url(spec.gateway.status_port, "keys"),
            mode=0o600)
        outcome = f"the running gateway uses it (reloaded in {seconds:.2f}s)"
    else:
        outcome = "the gateway is not running; it applies at the next `fleet up`"
        if paths.config_dir.is_dir():
            write_atomic(paths.api_keys_conf, rendered.text, mode=0o600)
    keys.save_store(paths.api_keys, store)
    if not spec.auth.enabled:
        outcome += ("; note: auth.enabled is false in this spec, so keys are not checked "
                    "until you set it to true")
    return outcome


def cmd_keys_add(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    store, key = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys).add(args.name)
    outcome = _apply_keys(spec, store)
    _progress(f"created {key.id} ({key.name}); {outcome}")
    _progress("the key is shown only now; store it where the client can read it")
    print(key.secret)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    store = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys)
    if args.json:
        print(json.dumps([{"id": k.id, "name": k.name, "created_at": k.created_at,
                           "revoked_at": k.revoked_at, "key": k.shown} for k in store.keys],
                         indent=2))
        return 0
    if not store.keys:
        print("no keys yet; create one with `fleet keys add NAME`")
        return 0

    def stamp(at: float | None) -> str:
        return "-" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))

    rows = [["ID", "NAME", "KEY", "CREATED", "REVOKED"]]
    rows += [[k.id, k.name, k.shown, stamp(k.created_at), stamp(k.revoked_at)]
             for k in store.keys]
    print(_table(rows))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    store, key = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys).revoke(args.key)
    outcome = _apply_keys(spec, store)
    _progress(f"revoked {key.id} ({key.name}); {outcome}")
    return 0


def cmd_bench_run(args: argparse.Namespace) -> int:
    import asyncio

    from router.bench import load, report, stats

    if args.url is None:
        state = read_state(RuntimePaths(load_spec(args.spec).runtime_dir))
        if state is None:
            raise ClusterError("no cluster is running and no --url was given",
                               hint="start one with `fleet up`, or pass --url http://host:port")
        args.url = state["gateway_url"]
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
        _progress(f"{arrivals.describe()} for {args.duration:g}s against {args.url}")
        result = asyncio.run(load.run(args.url, workload, arrivals, args.duration, key,
                                      load.terminal_progress(args.duration)))
        print(file=sys.stderr)
        summary = stats.summarize(result.records, result.duration_s, slo)
        entries.append(report.result_entry(arrivals, workload, result, summary))
        runs.append((arrivals.describe(), result))
        _progress(f"{summary['succeeded']:,} ok, {summary['failed']:,} failed, "
                  f"{summary['request_throughput']:,.1f} req/s, "
                  f"E2E p99 {summary['e2e_s']['p99'] or 0:.3f}s")
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / args.name
    _announce(report.write(out, args.name, _command(args), load.machine(), entries, runs), [])
    return 0


def cmd_bench_scenario(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from router.bench import load, scenario, scenario_report

    if args.scenario not in scenario.SCENARIOS:
        raise SpecError(f"no scenario named {args.scenario!r}",
                        hint="scenarios are: " + ", ".join(scenario.SCENARIOS))
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / args.scenario
    work = Path(tempfile.mkdtemp(prefix=f"fleet-{args.scenario}-"))
    try:
        result = scenario.run_scenario(args.scenario, work, args.tiny, _progress, args.seed)
    finally:
        if args.keep_work:
            _progress(f"fleet specs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    _announce(scenario_report.write(out, result, _command(args), load.machine()),
              result.targets)
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line a report names, so its figures can be repeated."""
    import shlex

    return "fleet " + shlex.join(args.argv_for_report)


def _announce(written: list[Path], targets: list[tuple[str, str, bool | None]]) -> None:
    for path in written:
        print(path)
    for text, figure, met in targets:
        verdict = "not measured" if met is None else ("met" if met else "MISSED")
        _progress(f"target: {text}: {figure} ({verdict})")


def cmd_drill(args: argparse.Namespace) -> int:
    from router.bench import drill, drill_report, load

    for flag, value in (("--before", args.before), ("--hold", args.hold), ("--after", args.after)):
        if value < 0:
            raise SpecError(f"{flag} must be 0 seconds or more", hint=f"e.g. {flag} 10")
    plan = drill.DrillPlan(fault=args.fault, replica=args.replica, rate=args.load,
                           before_s=args.before, hold_s=args.hold, after_s=args.after,
                           recover_timeout_s=args.recover_timeout)
    spec = load_spec(args.spec)
    result = drill.run_drill(spec, plan, os.environ.get("FLEET_API_KEY"), _progress)
    out = args.out or REPO_ROOT / "docs" / "benchmarks" / f"drill-{args.fault}-{result.engine}"
    _announce(drill_report.write(out, result, _command(args), load.machine()), result.targets)
    return 0


def _served_model(url: str, key: str | None) -> str | None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        data = requests.get(f"{url}/v1/models", headers=headers, timeout=10).json()
        return str(data["data"][0]["id"])
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet", description="Serve one LLM as several vLLM replicas behind one gateway URL.")
    parser.add_argument("--version", action="version", version=f"llm-fleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start the cluster and wait until it serves")
    _spec_arg(p)
    p.add_argument("--foreground", action="store_true",
                   help="check the configs, then run supervisord in the foreground "
                        "(containers); does not wait for health")
    p.add_argument("--prepare-only", action="store_true",
                   help="render and check the configs and write the runtime state, start "
                        "nothing (systemd's llm-fleet-prepare.service)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop every process of the cluster")
    _spec_arg(p)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="replicas, processes and health")
    _spec_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="show the log of a replica or another process")
    _spec_arg(p)
    p.add_argument("name", metavar="NAME", help="replica-0, gateway, prometheus, ...")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("render", help="write configs: the cluster's (default), a "
                                      "docker-compose deployment, or systemd units")
    _spec_arg(p)
    p.add_argument("target", nargs="?", default="configs", choices=("configs", "compose",
                                                                     "systemd"),
                   help="configs: nginx/Prometheus/supervisor files for inspection; compose: "
                        "docker-compose.yml and the gateway's spec (default --out: the "
                        "repository); systemd: unit files")
    p.add_argument("--out", type=Path, metavar="DIR")
    p.add_argument("--gpus", type=int, metavar="N", help="compose: GPUs, one replica each")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("keys", help="API keys of the gateway (docs/security.md)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    pk = keys_sub.add_parser("add", help="create a key and print it (shown only once)")
    _spec_arg(pk)
    pk.add_argument("name", metavar="NAME", help="who the key is for, e.g. team-search")
    pk.set_defaults(func=cmd_keys_add)
    pk = keys_sub.add_parser("list", help="every key: id, name, prefix, created, revoked")
    _spec_arg(pk)
    pk.add_argument("--json", action="store_true", help="machine-readable output")
    pk.set_defaults(func=cmd_keys_list)
    pk = keys_sub.add_parser("revoke", help="revoke a key by id or name; it stops at once")
    _spec_arg(pk)
    pk.add_argument("key", metavar="ID|NAME")
    pk.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("bench", help="measure the fleet: latency, throughput, goodput")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    pb = bench_sub.add_parser("run", help="load the gateway (or --url) and write a report to "
                                          "docs/benchmarks/NAME")
    _spec_arg(pb)
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
        "scenario", help="llm-fleet and its baselines side by side on simulated fleets: "
                         "overhead, heterogeneous, homogeneous, scaling (docs/benchmarks)")
    pb.add_argument("scenario", metavar="NAME",
                    help="overhead | heterogeneous | homogeneous | scaling")
    pb.add_argument("--out", type=Path, metavar="DIR",
                    help="report folder (default: docs/benchmarks/NAME)")
    pb.add_argument("--tiny", action="store_true",
                    help="seconds instead of minutes: proves the machinery, measures nothing")
    pb.add_argument("--keep-work", action="store_true",
                    help="keep the fleets' specs and logs (printed at the end)")
    pb.add_argument("--seed", type=int, default=0)
    pb.set_defaults(func=cmd_bench_scenario)

    p = sub.add_parser("drill", help="inject a fault into one replica under load and report "
                                     "what clients saw")
    _spec_arg(p)
    p.add_argument("fault", choices=("kill", "hang", "slow", "restart"),
                   help="kill: SIGKILL; restart: SIGTERM; hang: stop answering; "
                        "slow: a third of the speed (simulated replicas)")
    p.add_argument("replica", help="e.g. replica-1 (see `fleet status`)")
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
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="report folder (default: docs/benchmarks/drill-FAULT-ENGINE)")
    p.set_defaults(func=cmd_drill)

    p = sub.add_parser("replica", help="run one replica in the foreground (systemd units)")
    replica_sub = p.add_subparsers(dest="replica_command", required=True, metavar="SUBCOMMAND")
    pp = replica_sub.add_parser("exec", help="become replica N: its vLLM, pinned as planned")
    pp.add_argument("index", type=int, metavar="N")
    _spec_arg(pp)
    pp.set_defaults(func=cmd_replica_exec)

    p = sub.add_parser("model", help="model cache commands")
    model_sub = p.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    pp = model_sub.add_parser("prepare",
                              help="download/convert the model once, for offline serving")
    _spec_arg(pp)
    pp.add_argument("--engine", choices=["cpu", "gpu"], default=None,
                    help="prepare the model of this engine (default: what the spec picks here)")
    pp.add_argument("--force", action="store_true", help="prepare again even if cached")
    pp.add_argument("--dummy", action="store_true",
                    help="config, quantization and tokenizer only, no weights: for "
                         "model.load_format: dummy (measuring a box before downloading)")
    pp.set_defaults(func=cmd_model_prepare)

    p = sub.add_parser("doctor", help="preflight of a GPU box: driver against vLLM's CUDA, "
                                      "GPUs, model memory, ports, disk; a fix for each problem")
    _spec_arg(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bundle", help="build an offline bundle for a host without a package "
                                      "registry (docs/production.md)")
    p.add_argument("--target", choices=["gpu"], default="gpu",
                   help="gpu: vLLM's CUDA 13 build for Python 3.12 and torch 2.11")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the parts, manifest.json, SHA256SUMS and install.sh go")
    p.add_argument("--part-size-mib", type=float, default=60.0, metavar="MIB",
                   help="largest part, in MiB (default 60: fits a 64 MiB transfer limit)")
    p.add_argument("--no-model", action="store_true",
                   help="leave out the config-only reference model (model.load_format: dummy)")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("sim", help="the vLLM-compatible replica simulator")
    sim_sub = p.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")
    ps = sim_sub.add_parser("serve", help="serve one simulated replica")
    ps.add_argument("--port", type=int, required=True)
    ps.add_argument("--host", default="127.0.0.1")
    ps.add_argument("--model", default=SIM_SERVED_MODEL_NAME, help="served model name")
    ps.add_argument("--settings", metavar="JSON",
                    help="all settings as JSON (what `fleet up` passes); flags override it")
    ps.add_argument("--speed", type=float, help="speed factor (a GPU at a third: 0.33)")
    ps.add_argument("--max-num-seqs", type=int, help="running requests before queueing")
    ps.add_argument("--max-model-len", type=int)
    ps.add_argument("--kv-capacity-tokens", type=int)
    ps.add_argument("--mean-output-tokens", type=int)
    ps.add_argument("--seed", type=int)
    ps.add_argument("--startup-delay", type=float, metavar="SECONDS",
                    help="refuse connections this long after start")
    ps.add_argument("--slow", type=float, help="fault: extra speed multiplier")
    ps.add_argument("--error-rate", type=float, help="fault: fraction of requests answered 500")
    ps.add_argument("--hang", action="store_true", help="fault: accept but never answer")
    ps.set_defaults(func=cmd_sim_serve)

    p = sub.add_parser("controller", help="the adaptive weight controller")
    ctl_sub = p.add_subparsers(dest="controller_command", required=True, metavar="SUBCOMMAND")
    pc = ctl_sub.add_parser("run", help="run the controller (supervisord does this)")
    _spec_arg(pc)
    pc.set_defaults(func=cmd_controller_run)

    for name, func, text in (("drain", cmd_drain, "take a replica out of rotation"),
                             ("undrain", cmd_undrain, "put a drained replica back")):
        p = sub.add_parser(name, help=text)
        _spec_arg(p)
        p.add_argument("replica", metavar="REPLICA")
        p.set_defaults(func=func)
    p = sub.add_parser("pin", help="pin a replica's weight for a while")
    _spec_arg(p)
    p.add_argument("replica", metavar="REPLICA")
    p.add_argument("weight", type=int, nargs="?", metavar="WEIGHT", help="1-100")
    p.add_argument("--for", dest="for_s", type=float, default=600.0, metavar="SECONDS",
                   help="until the pin expires (default 600)")
    p.add_argument("--clear", action="store_true", help="remove the pin")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("chat", help="send one chat message through the gateway (with keys on, "
                                    "the key comes from FLEET_API_KEY)")
    _spec_arg(p)
    p.add_argument("message")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # What a report names as its command when fleet runs in-process.
    args.argv_for_report = list(argv) if argv is not None else sys.argv[1:]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # One line per HTTP call is noise at the command line; -v shows them.
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
        return code
    except FleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
