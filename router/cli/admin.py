"""The controller: its process, and an operator's drain and pin."""

from __future__ import annotations

import argparse

from router.cli.common import progress, spec_arg
from router.config.spec import load_spec
from router.controller.policy import DEFAULT_PIN_TTL_S
from router.disk.paths import RuntimePaths
from router.errors import ClusterError, SpecError
from router.runtime import cluster, pair
from router.runtime.state import ClusterState
from router.upstream import MAX_WEIGHT, MIN_WEIGHT


def cmd_controller_run(args: argparse.Namespace) -> int:
    from router.controller.main import run

    run(load_spec(args.spec))
    return 0


def _admin(args: argparse.Namespace, path: str, body: dict[str, object] | None = None) -> int:
    spec = load_spec(args.spec)
    paths = RuntimePaths(spec.runtime_dir)
    state = ClusterState.load(paths)
    if state is None:
        raise ClusterError("no cluster is running", hint="start one with `fleet up`")
    result = cluster.controller_call(paths, state, "POST", path, body, required=True)
    assert result is not None
    decision = result["decision"]
    print(f"{args.replica}: {decision['reasons'].get(args.replica, '')}"
          f" ({'applied' if decision['applied'] else decision['why']})")
    if decision.get("error"):
        raise ClusterError("recorded, but the gateway still runs its previous configuration: "
                           + decision["error"],
                           hint="the controller retries on its own; `fleet logs controller` "
                                "says when it succeeds")
    pair.fan_out(spec, paths, "POST", path, body, progress)
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    return _admin(args, f"/replicas/{args.replica}/drain")


def cmd_undrain(args: argparse.Namespace) -> int:
    return _admin(args, f"/replicas/{args.replica}/undrain")


def cmd_pin(args: argparse.Namespace) -> int:
    if args.clear == (args.weight is not None):
        raise SpecError(f"give either a WEIGHT ({MIN_WEIGHT}-{MAX_WEIGHT}) or --clear",
                        hint="e.g. `fleet pin replica-1 20 --for 600` or `fleet pin replica-1 "
                             "--clear`")
    return _admin(args, f"/replicas/{args.replica}/weight",
                  {"weight": args.weight, "ttl_s": args.for_s})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controller", help="the adaptive weight controller")
    ctl_sub = p.add_subparsers(dest="controller_command", required=True, metavar="SUBCOMMAND")
    pc = ctl_sub.add_parser("run", help="run the controller (supervisord does this)")
    spec_arg(pc)
    pc.set_defaults(func=cmd_controller_run)

    for name, func, text in (("drain", cmd_drain, "take a replica out of rotation"),
                             ("undrain", cmd_undrain, "put a drained replica back")):
        p = sub.add_parser(name, help=text)
        spec_arg(p)
        p.add_argument("replica", metavar="REPLICA")
        p.set_defaults(func=func)
    p = sub.add_parser("pin", help="pin a replica's weight for a while")
    spec_arg(p)
    p.add_argument("replica", metavar="REPLICA")
    p.add_argument("weight", type=int, nargs="?", metavar="WEIGHT",
                   help=f"{MIN_WEIGHT}-{MAX_WEIGHT}")
    p.add_argument("--for", dest="for_s", type=float, default=DEFAULT_PIN_TTL_S,
                   metavar="SECONDS", help=f"until the pin expires (default {DEFAULT_PIN_TTL_S:g})")
    p.add_argument("--clear", action="store_true", help="remove the pin")
    p.set_defaults(func=cmd_pin)

