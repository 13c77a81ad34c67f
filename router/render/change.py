"""What `fleet apply` must do to turn a running cluster into a new spec. Pure.

Both sides are planned and rendered the same way `fleet up` does; the
change is read off what differs: a rendered file that differs is written
and reloaded, a program whose command differs is restarted, a replica whose
command differs is rolled (drained, restarted, put back) one at a time.
What a running cluster cannot take (a port, the engine, a program turned on
or off, the shape of the upstream the controller writes) is refused before
anything is touched, each key named.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.config.plan import ClusterPlan
from router.config.spec import ClusterSpec
from router.disk.paths import ALERT_RULES, RECORDING_RULES
from router.render.files import RenderedConfig
from router.render.programs import Program

# Keys a running cluster cannot change: the ports and folders every process
# was started with, and the engine.
FIXED_KEYS = ("engine", "runtime_dir", "ports.", "gateway.host", "gateway.port",
              "gateway.status_port", "prometheus.port", "controller.port", "gpu_exporter.port",
              "gateway_metrics.nginx_exporter_port", "gateway_metrics.log_exporter_port",
              "external_replicas")
# Programs turned on or off: a cluster with a different set of processes.
PROGRAM_KEYS = ("prometheus.enabled", "controller.enabled", "gpu_exporter.enabled",
                "gateway_metrics.enabled")
# The upstream block is the controller's file and nginx.conf refers into it
# (affinity's ring, the per-replica upstreams): both would have to change in
# one reload, which is `fleet up`'s job.
UPSTREAM_KEYS = ("gateway.affinity", "gateway.balance", "gateway.keepalive",
                 "gateway.max_fails", "gateway.fail_timeout_s")
# What the controller reads at its start besides the replicas it is given.
CONTROLLER_KEYS = ("controller.", "prometheus.scrape_interval_s", "console.grafana_url",
                   "model.runner", "priority.shed_queue_wait_s",
                   "priority.shed_queue_wait_s.", "priority.fair_share", "budgets.")
PROMETHEUS_FILES = ("prometheus.yml", RECORDING_RULES, ALERT_RULES)
REPLICA_PREFIX = "replica-"


@dataclass(frozen=True)
class KeyChange:
    """One spec key whose value differs, as the YAML names it."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {_shown(self.old)} -> {_shown(self.new)}"


@dataclass(frozen=True)
class ClusterSide:
    """One cluster as `fleet up` would start it: plan, files and programs."""

    plan: ClusterPlan
    rendered: RenderedConfig
    programs: tuple[Program, ...]

    @property
    def replica_programs(self) -> dict[str, Program]:
        return {p.name: p for p in self.programs if p.name.startswith(REPLICA_PREFIX)}

    @property
    def other_programs(self) -> dict[str, Program]:
        return {p.name: p for p in self.programs if not p.name.startswith(REPLICA_PREFIX)}


@dataclass(frozen=True)
class ChangePlan:
    """Everything `fleet apply` does, in the order it does it."""

    keys: tuple[KeyChange, ...]
    refused: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    roll: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    # Non-replica programs whose command changed.
    restart: tuple[str, ...] = ()
    prometheus_files: tuple[str, ...] = ()
    gateway: bool = False
    logrotate: bool = False
    # Restarted last, once the new state is written: it reads the replicas
    # and its settings at start.
    controller: bool = False
    gpu_exporter: bool = False
    replicas_before: int = 0
    replicas_after: int = 0
    warnings: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.keys or self.add or self.roll or self.remove or self.restart
                    or self.prometheus_files or self.gateway or self.logrotate)

    @property
    def touches_replicas(self) -> bool:
        return bool(self.roll or self.remove)

    def fewest_in_rotation(self) -> int:
        """Replicas serving at the lowest point: rolls take one out at a time
        before the removals; added replicas join only at the end."""
        fewest = self.replicas_before - (1 if self.roll else 0)
        return min(fewest, self.replicas_after) if self.remove else fewest

    def describe(self) -> list[str]:
        """The plan in the words `fleet apply --dry-run` prints."""
        if self.empty:
            return ["no change: the running cluster already runs this spec"]
        lines = ["spec keys that differ:"] + [f"  {change}" for change in self.keys]
        if self.refused:
            lines.append("refused, nothing would be touched:")
            lines += [f"  {reason}" for reason in self.refused]
            return lines
        lines.append("steps, in order:")
        step = iter(range(1, 1000))
        for name in self.add:
            lines.append(f"  {next(step)}. start {name} (new); it joins rotation when the "
                         "controller restarts at the end, after its warm-up")
        for name in self.roll:
            lines.append(f"  {next(step)}. roll {name}: drain, wait for its requests "
                         "(rollout.drain_timeout_s), restart with the new settings, wait "
                         "for health, put back")
        for name in self.remove:
            lines.append(f"  {next(step)}. remove {name}: drain, wait for its requests, stop")
        if self.prometheus_files:
            lines.append(f"  {next(step)}. write {', '.join(self.prometheus_files)}, "
                         "promtool check, reload Prometheus")
        for name in self.restart:
            lines.append(f"  {next(step)}. restart {name} (its command changed)")
        if self.logrotate:
            lines.append(f"  {next(step)}. write logrotate.conf (read on its next pass)")
        if self.gateway:
            lines.append(f"  {next(step)}. write nginx.conf, nginx -t, graceful reload "
                         "(open streams finish on the old workers)")
        if self.controller:
            lines.append(f"  {next(step)}. restart the controller (it reads the replicas "
                         "and its settings at start)")
        if self.gpu_exporter:
            lines.append(f"  {next(step)}. restart gpu-exporter (it labels GPUs by replica)")
        lines.append(f"  {next(step)}. record the spec as the running one")
        if self.touches_replicas:
            lines.append(f"capacity during the roll: at least {self.fewest_in_rotation()} of "
                         f"{self.replicas_before} replica(s) in rotation")
        else:
            lines.append("no replica is restarted")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


def _shown(value: Any) -> str:
    return "(unset)" if value is None else repr(value) if isinstance(value, str) else str(value)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def key_changes(old: ClusterSpec, new: ClusterSpec) -> tuple[KeyChange, ...]:
    """Every leaf key whose value differs; a list counts as one value."""
    before = dict(_flatten(old.model_dump(mode="json")))
    after = dict(_flatten(new.model_dump(mode="json")))
    return tuple(KeyChange(key, before.get(key), after.get(key))
                 for key in sorted(before.keys() | after.keys())
                 if before.get(key) != after.get(key))


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _refusals(keys: tuple[KeyChange, ...], old: ClusterSide, new: ClusterSide) -> list[str]:
    refused = []
    for change in keys:
        if _matches(change.key, FIXED_KEYS):
            refused.append(f"{change} cannot change while the cluster runs; "
                           "`fleet down`, then `fleet up --spec FILE`")
        elif _matches(change.key, PROGRAM_KEYS):
            refused.append(f"{change} starts or stops a program; `fleet down`, then "
                           "`fleet up --spec FILE`")
        elif _matches(change.key, UPSTREAM_KEYS):
            refused.append(f"{change} changes the upstream block the controller writes and "
                           "nginx.conf together; `fleet down`, then `fleet up --spec FILE`")
    if not refused and old.other_programs.keys() != new.other_programs.keys():
        # A program that follows from the machine rather than a key (gpu_exporter: auto).
        gone = sorted(old.other_programs.keys() - new.other_programs.keys())
        came = sorted(new.other_programs.keys() - old.other_programs.keys())
        refused.append(f"programs would change (start: {', '.join(came) or '-'}; stop: "
                       f"{', '.join(gone) or '-'}); `fleet down`, then `fleet up --spec FILE`")
    if keys and new.plan.spec.topology.role == "gateway":
        refused.append("topology.role: gateway: the replica hosts run the replicas; change "
                       "them there with `fleet apply` (their addresses stay), and what this "
                       "gateway routes to with `fleet down` and `fleet up` on each gateway "
                       "of the pair, the one not holding the address first")
    elif keys and new.plan.replicas and any(r.external for r in new.plan.replicas):
        refused.append("engine external: the replicas are run by something else; change "
                       "them there, and the gateway with `fleet down` and `fleet up`")
    return refused


def _replica_records(plan: ClusterPlan) -> list[tuple[str, str, str, int | None]]:
    return [(r.name, r.url, r.device, r.max_num_seqs) for r in plan.replicas]


def plan_change(old: ClusterSide, new: ClusterSide) -> ChangePlan:
    """The steps that turn ``old`` (running) into ``new``."""
    keys = key_changes(old.plan.spec, new.plan.spec)
    before, after = len(old.plan.replicas), len(new.plan.replicas)
    refused = _refusals(keys, old, new)
    if refused:
        return ChangePlan(keys=keys, refused=tuple(refused), replicas_before=before,
                          replicas_after=after)
    old_replicas, new_replicas = old.replica_programs, new.replica_programs
    add = tuple(n for n in new_replicas if n not in old_replicas)
    remove = tuple(n for n in old_replicas if n not in new_replicas)
    roll = tuple(n for n in new_replicas
                 if n in old_replicas and new_replicas[n] != old_replicas[n])
    old_others, new_others = old.other_programs, new.other_programs
    restart = tuple(n for n in new_others if n not in ("controller", "gpu-exporter")
                    and new_others[n] != old_others[n])
    files_old, files_new = old.rendered.files, new.rendered.files
    prometheus_files = tuple(f for f in PROMETHEUS_FILES
                             if files_new.get(f) != files_old.get(f) and f in files_new)
    records_differ = _replica_records(old.plan) != _replica_records(new.plan)
    controller = "controller" in new_others and (
        records_differ or any(_matches(k.key, CONTROLLER_KEYS) for k in keys)
        or old.plan.warmup != new.plan.warmup
        or old.plan.engine.served_model_name != new.plan.engine.served_model_name)
    warnings = []
    if roll and old.plan.engine.served_model_name != new.plan.engine.served_model_name:
        warnings.append(f"the served model name changes ({old.plan.engine.served_model_name!r}"
                        f" -> {new.plan.engine.served_model_name!r}): during the roll each "
                        "name is answered by only some replicas")
    return ChangePlan(
        keys=keys, add=add, roll=roll, remove=remove, restart=restart,
        prometheus_files=prometheus_files,
        gateway=files_new["nginx.conf"] != files_old["nginx.conf"],
        logrotate=files_new["logrotate.conf"] != files_old["logrotate.conf"],
        controller=controller,
        gpu_exporter="gpu-exporter" in new_others and records_differ,
        warnings=tuple(warnings), replicas_before=before, replicas_after=after)
