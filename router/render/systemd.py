"""`fleet render systemd`: unit files for operators who run without Docker.

systemd takes supervisord's place: one unit per program that `fleet up`
would supervise (same command lines, from :func:`router.render.programs.programs`),
a templated unit for the replicas that computes each replica's command from
the spec when it starts, a oneshot unit that renders and checks the configs
first, and a target that groups them.
"""

from __future__ import annotations

from pathlib import Path

from router.config.plan import ClusterPlan
from router.disk.paths import RuntimePaths
from router.host.machine import MachineFacts
from router.render.programs import Program, programs
from router.render.templates import template

TARGET = "llm-fleet.target"
PREPARE = "llm-fleet-prepare.service"
REPLICA_TEMPLATE = "llm-fleet-replica@.service"


def _environment(program: Program) -> list[str]:
    # systemd expands % specifiers: a literal percent is %%.
    return [f'"{key}={value}"'.replace("%", "%%") for key, value in sorted(program.env.items())]


def render_units(plan: ClusterPlan, spec_path: Path, machine: MachineFacts) -> dict[str, str]:
    """File name -> text of every unit, for this machine's Python and ``spec_path``."""
    paths = RuntimePaths(plan.spec.runtime_dir)
    common = {"python": machine.python, "spec": str(spec_path),
              "runtime_dir": str(paths.root)}
    units: dict[str, str] = {
        PREPARE: template("deploy/systemd/llm-fleet-prepare.service.j2").render(**common),
    }
    names = []
    for replica in plan.replicas:
        if not replica.external:
            names.append(f"llm-fleet-replica@{replica.index}.service")
    if names:
        units[REPLICA_TEMPLATE] = template(
            "deploy/systemd/llm-fleet-replica@.service.j2").render(**common)
    for program in programs(plan, paths, machine):
        if program.name.startswith("replica-"):
            continue
        unit = f"llm-fleet-{program.name}.service"
        names.append(unit)
        units[unit] = template("deploy/systemd/llm-fleet-program.service.j2").render(
            name=program.name, comment=program.comment, command=program.command,
            environment=_environment(program), stopsignal=program.stopsignal,
            stopwaitsecs=program.stopwaitsecs, **common)
    units[TARGET] = template("deploy/systemd/llm-fleet.target.j2").render(
        replicas=len(plan.replicas), units=names)
    return units
