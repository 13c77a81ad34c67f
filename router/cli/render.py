"""`fleet render`: the cluster's configs, a docker-compose deployment, systemd units."""

from __future__ import annotations

import argparse
from pathlib import Path

from router import REPO_ROOT
from router.cli.common import spec_arg
from router.config.spec import ClusterSpec, load_spec
from router.disk.paths import RuntimePaths, write_atomic
from router.errors import SpecError
from router.host.machine import require_binary
from router.render import compose
from router.render.keepalived import render_keepalived
from router.runtime import cluster, units
from router.runtime.configs import check_keepalived, write_checked


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
    if args.target == "keepalived":
        # keepalived's config needs no replicas: rendered from the spec alone,
        # for hosts whose keepalived runs as the system's own service.
        out = args.out.resolve()
        paths = RuntimePaths(spec.runtime_dir)
        path = out / paths.keepalived_conf.name
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, render_keepalived(spec, require_binary("curl"),
                                             paths.gateway_down_flag))
        check_keepalived(path, require_binary("keepalived"))
        print(path)
        return 0
    if args.target == "systemd":
        for path in units.write_units(spec, args.spec, args.out.resolve()):
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("render", help="write configs: the cluster's (default), a "
                                      "docker-compose deployment, or systemd units")
    spec_arg(p)
    p.add_argument("target", nargs="?", default="configs",
                   choices=("configs", "compose", "systemd", "keepalived"),
                   help="configs: nginx/Prometheus/supervisor files for inspection; compose: "
                        "docker-compose.yml and the gateway's spec (default --out: the "
                        "repository); systemd: unit files; keepalived: this gateway's "
                        "keepalived.conf (the spec's ha section), checked with keepalived -t")
    p.add_argument("--out", type=Path, metavar="DIR")
    p.add_argument("--gpus", type=int, metavar="N", help="compose: GPUs, one replica each")
    p.set_defaults(func=cmd_render)

