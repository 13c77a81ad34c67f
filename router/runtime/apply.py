"""`fleet apply`: change a running cluster to a new spec, nothing lost.

The running cluster's spec (config/spec.json) and the new one are planned
and rendered alike; router.render.change says what differs. Everything new
is checked before anything is touched (nginx -t and promtool on candidate
files, the model resolved, the keys a running cluster cannot change). Then:

1. new replicas start (they join rotation when the controller restarts);
2. each changed replica in turn is drained through the controller, waited
   on until its last request has finished (``rollout.drain_timeout_s``),
   restarted from the new supervisord section, waited on until healthy and
   put back; only then the next, so at most one is out;
3. replicas no longer wanted are drained, waited on and stopped;
4. Prometheus reloads its files, changed programs restart, nginx reloads
   its new nginx.conf gracefully;
5. the new state and spec are recorded and the controller restarts on them.

A replica that does not come up on its new settings ends the roll: it and
every replica already rolled are put back on the old settings, the old
spec stays recorded and the command fails naming the replica and its log.
One apply at a time holds ``run/apply.lock``; ``rollout.json`` shows its
progress to `fleet status`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from router.config.spec import ClusterSpec, load_spec
from router.disk.keys import load_store
from router.disk.paths import RuntimePaths, write_atomic
from router.errors import ClusterError, RenderError
from router.host.devices import Inventory, discover
from router.host.machine import MachineFacts, detect, stage_console
from router.render.change import ChangePlan, ClusterSide, plan_change
from router.render.files import render_all
from router.render.nginx import stamped_version
from router.render.programs import programs
from router.runtime.applying import RolloutProgress, apply_lock
from router.runtime.cluster import controller_call, controller_status, log_tail, make_plan
from router.runtime.configs import check_prometheus
from router.runtime.gateway import apply_gateway_file, nginx_test, status_url
from router.runtime.health import probe
from router.runtime.state import ClusterState
from router.runtime.supervise import Supervisor

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# How long the controller may take to route a drained replica out: a decision
# and one checked reload, on a busy host.
ROUTED_OUT_BOUND_S = 60.0
# How long the other replicas may take to be back in rotation before a roll
# goes on without them (it then refuses instead).
OTHERS_IN_ROTATION_BOUND_S = 120.0
POLL_S = 0.5
# Reads in a row that must find a drained replica idle: a request an old
# nginx worker sent just before the reload shows up on the next read.
IDLE_READS = 2
IN_FLIGHT_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


@dataclass(frozen=True)
class ReplicaRoll:
    """One replica taken out, restarted and put back, with its timings."""

    name: str
    drain_s: float
    # Requests still running on it when rollout.drain_timeout_s ran out.
    cut: int
    restart_s: float
    rejoin_s: float
    # Waiting out its slow start before the next replica is drained.
    settle_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.drain_s + self.restart_s + self.rejoin_s + self.settle_s


@dataclass
class ApplyOutcome:
    change: ChangePlan
    rolls: list[ReplicaRoll] = field(default_factory=list)
    seconds: float = 0.0


def running_spec(paths: RuntimePaths) -> ClusterSpec:
    """The spec the running cluster was started or last applied with."""
    try:
        return ClusterSpec.model_validate_json(paths.spec_json.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ClusterError(f"{paths.spec_json} is missing: the running cluster's spec is "
                           "unknown", hint="`fleet down`, then `fleet up --spec FILE`") from exc
    except ValidationError as exc:
        raise ClusterError(f"{paths.spec_json} is not a spec this version reads "
                           f"({exc.error_count()} error(s))",
                           hint="a cluster started by another version: `fleet down`, then "
                                "`fleet up --spec FILE`") from exc


def cluster_side(spec: ClusterSpec, paths: RuntimePaths, machine: MachineFacts,
                 inventory: Inventory, require_model: bool) -> ClusterSide:
    plan = make_plan(spec, inventory, python=machine.python, require_model=require_model)
    rendered = render_all(plan, paths, machine, load_store(paths.api_keys))
    return ClusterSide(plan, rendered, tuple(programs(plan, paths, machine)))


def in_flight(metrics_text: str) -> int | None:
    """Requests a replica is running or queueing, from its /metrics; None if unreadable."""
    try:
        samples = [s for family in text_string_to_metric_families(metrics_text)
                   for s in family.samples if s.name in IN_FLIGHT_METRICS]
    except ValueError:
        return None
    return int(sum(s.value for s in samples)) if samples else None


def plan_apply(spec_path: Path | None, inventory: Inventory | None = None
               ) -> tuple[ChangePlan, ClusterSide, ClusterSide, RuntimePaths]:
    """What `fleet apply --spec FILE` would do; changes nothing."""
    new_spec = load_spec(spec_path)
    paths = RuntimePaths(new_spec.runtime_dir)
    if ClusterState.load(paths) is None or not Supervisor(paths).is_running():
        raise ClusterError(f"no cluster is running from {paths.root} under supervisord",
                           hint="`fleet up --spec FILE` starts one; under systemd, change the "
                                "spec and restart the units")
    inventory = inventory or discover()
    machine = detect()
    old = cluster_side(running_spec(paths), paths, machine, inventory, require_model=False)
    new = cluster_side(new_spec, paths, machine, inventory, require_model=True)
    return plan_change(old, new), old, new, paths


def apply(spec_path: Path | None, progress: Progress,
          inventory: Inventory | None = None) -> ApplyOutcome:
    """Carry out the change to ``spec_path``; raises ClusterError on a refusal or failure."""
    change, old, new, paths = plan_apply(spec_path, inventory)
    if change.refused:
        raise ClusterError("the running cluster cannot take this change:\n  "
                           + "\n  ".join(change.refused),
                           hint="nothing was touched; `fleet apply --dry-run` shows the plan")
    outcome = ApplyOutcome(change)
    if change.empty:
        progress("no change: the running cluster already runs this spec")
        return outcome
    with apply_lock(paths):
        started = time.monotonic()
        _Rollout(paths, spec_path, old, new, change, progress, outcome).run()
        outcome.seconds = time.monotonic() - started
    return outcome


class _Rollout:
    """One apply, step by step; knows how to put back what it changed."""

    def __init__(self, paths: RuntimePaths, spec_path: Path | None, old: ClusterSide,
                 new: ClusterSide, change: ChangePlan, progress: Progress,
                 outcome: ApplyOutcome) -> None:
        self.paths = paths
        self.spec_path = spec_path
        self.old, self.new = old, new
        self.change = change
        self.progress = progress
        self.outcome = outcome
        self.supervisor = Supervisor(paths)
        state = ClusterState.load(paths)
        assert state is not None  # plan_apply checked
        self.state = state
        self.spec = new.plan.spec
        self.generation = self.spec.generation()
        self.done: list[str] = []
        # The replica this apply has drained and not yet put back, and the
        # one it has restarted on the new settings and not yet seen healthy.
        self.draining: str | None = None
        self.restarting: str | None = None

    # --- the steps -----------------------------------------------------------
    def run(self) -> None:
        change = self.change
        if change.touches_replicas and self.state.controller_url is None:
            raise ClusterError("replicas are rolled through the controller's drain, and this "
                               "cluster runs without it",
                               hint="`fleet down`, then `fleet up --spec FILE`")
        self._check_candidates()
        programs_change = bool(change.add or change.roll or change.remove or change.restart)
        try:
            if programs_change:
                self._load_supervisor_config(self.new)
            for name in change.add:
                self._start_new(name)
            rolled: list[str] = []
            for name in change.roll:
                # Another drain follows: let this one's slow start end first.
                settle = name != change.roll[-1] or bool(change.remove)
                try:
                    self.outcome.rolls.append(self._roll(name, settle))
                except ClusterError as exc:
                    self._roll_back(name, rolled, exc)
                rolled.append(name)
            for name in change.remove:
                self._remove(name)
            self._apply_files_and_programs()
        except BaseException:
            # The running spec stays the old one: so does supervisord's file,
            # which a later restart of a program would read.
            if programs_change:
                self._load_supervisor_config(self.old)
            raise
        finally:
            # Whatever stopped the apply (an error, Ctrl-C), no replica stays
            # out of rotation because of it.
            if self.draining is not None:
                controller_call(self.paths, self.state, "POST",
                                f"/replicas/{self.draining}/undrain")
        self._record()

    def _note(self, step: str) -> None:
        self.progress(step)
        RolloutProgress(step=step, generation=self.generation, done=tuple(self.done),
                        pid=os.getpid()).save(self.paths)

    def _check_candidates(self) -> None:
        """nginx -t and promtool on the new files, beside the live ones."""
        files = self.new.rendered.files
        if self.change.gateway:
            if self.spec.console.enabled:
                stage_console(detect())
            candidate = self.paths.config_dir / "nginx.conf.candidate"
            write_atomic(candidate, files[self.paths.nginx_conf.name])
            try:
                problem = nginx_test(self.paths, candidate)
            finally:
                candidate.unlink(missing_ok=True)
            if problem is not None:
                raise RenderError(f"nginx rejected the new nginx.conf: {problem}",
                                  hint="nothing was touched; fix the spec value named above")
        if self.change.prometheus_files:
            folder = self.paths.config_dir / "candidate"
            folder.mkdir(exist_ok=True)
            try:
                for name in ("prometheus.yml", *self.change.prometheus_files):
                    write_atomic(folder / name, files.get(name) or
                                 (self.paths.config_dir / name).read_text(encoding="utf-8"))
                for name in self.old.rendered.files:
                    if name.endswith(".rules.yml") and not (folder / name).exists():
                        shutil.copy(self.paths.config_dir / name, folder / name)
                check_prometheus(folder / "prometheus.yml")
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def _load_supervisor_config(self, side: ClusterSide) -> None:
        write_atomic(self.paths.supervisord_conf, side.rendered.files["supervisord.conf"])
        self.supervisor.reread()

    def _start_new(self, name: str) -> None:
        self._note(f"starting {name} (new)")
        started = time.monotonic()
        self.supervisor.replace_program(name)
        try:
            self._wait_healthy(name, self.new)
        except ClusterError:
            self._load_supervisor_config(self.old)
            self.supervisor.replace_program(name)
            raise
        self.progress(f"{name} healthy after {time.monotonic() - started:.0f}s; it joins "
                      "rotation when the controller restarts at the end")

    def _roll(self, name: str, settle: bool) -> ReplicaRoll:
        self._wait_others_in_rotation(name)
        self._note(f"rolling {name}: draining")
        drain_s, cut = self._drain(name)
        self._note(f"rolling {name}: restarting with the new settings")
        started = time.monotonic()
        self.restarting = name
        self.supervisor.replace_program(name)
        self._wait_healthy(name, self.new)
        self.restarting = None
        restart_s = time.monotonic() - started
        rejoin_s = self._undrain(name)
        self.done.append(name)
        self._save_generation(name, self.generation)
        settle_s = self._settle(name, rejoin_s) if settle else 0.0
        roll = ReplicaRoll(name, drain_s, cut, restart_s, rejoin_s, settle_s)
        self.progress(f"{name} rolled in {roll.total_s:.0f}s (drained {drain_s:.1f}s, "
                      f"restarted {restart_s:.1f}s, back in rotation {rejoin_s:.1f}s"
                      + (f", slow start {settle_s:.1f}s" if settle_s else "") + ")"
                      + (f"; {cut} request(s) were still running at the drain timeout and "
                         "were cut" if cut else ""))
        return roll

    def _settle(self, name: str, since_healthy_s: float) -> float:
        """Wait out the controller's slow start of ``name``, which began when it
        answered /health: draining the next replica before would leave less
        than all but one replica's worth of weight in rotation."""
        ramp_s = self.old.plan.spec.controller.slow_start_s
        wait_s = max(0.0, ramp_s - since_healthy_s)
        if wait_s:
            self._note(f"{name} is back; its slow start ends in {wait_s:.0f}s, then the next")
            time.sleep(wait_s)
        return wait_s

    def _roll_back(self, failed: str, rolled: list[str], cause: ClusterError) -> None:
        """Put ``failed`` and every replica rolled before it back on the old
        settings, then raise: the fleet runs the spec it ran before."""
        restarted = self.restarting == failed
        tail = log_tail(self.paths.log(failed)) if restarted else ""
        self.progress(f"the roll stopped at {failed}; putting "
                      + (f"it and {len(rolled)}" if restarted else f"{len(rolled)}")
                      + " rolled replica(s) back on the old settings")
        self._load_supervisor_config(self.old)
        if restarted:
            self.supervisor.replace_program(failed)
            self._wait_healthy(failed, self.old)
            self.restarting = None
        if self.draining == failed:
            self._undrain(failed)
        for name in reversed(rolled):
            self._wait_others_in_rotation(name)
            self._drain(name)
            self.supervisor.replace_program(name)
            self._wait_healthy(name, self.old)
            self._undrain(name)
            self._save_generation(name, self.old.plan.spec.generation())
        kept = "it and every replica rolled before it" if restarted else (
            "every replica rolled before it" if rolled else "every replica")
        if restarted:
            raise ClusterError(
                f"{failed} failed on the new settings ({cause.message}); {kept} run the old "
                f"settings again, and the old spec stays the running one. Last lines of "
                f"its log:\n{tail}",
                hint=f"fix the spec (see `fleet logs {failed}`), then `fleet apply` again")
        raise ClusterError(
            f"the roll stopped before {failed} was restarted: {cause.message}; {kept} runs "
            "the old settings, and the old spec stays the running one",
            hint=cause.hint or "see `fleet status`, then `fleet apply` again")

    def _remove(self, name: str) -> None:
        self._note(f"removing {name}: draining")
        drain_s, cut = self._drain(name)
        self.supervisor.replace_program(name)
        # The drain would outlive the replica in overrides.json and greet a
        # replica of that name added later.
        controller_call(self.paths, self.state, "POST", f"/replicas/{name}/undrain")
        self.draining = None
        self.done.append(name)
        self.progress(f"{name} stopped after a {drain_s:.1f}s drain"
                      + (f"; {cut} request(s) were cut at the drain timeout" if cut else ""))

    def _apply_files_and_programs(self) -> None:
        files = self.new.rendered.files
        if self.change.prometheus_files:
            self._note("reloading Prometheus")
            for name in self.change.prometheus_files:
                write_atomic(self.paths.config_dir / name, files[name])
            self._reload_prometheus()
        for name in self.change.restart:
            self._note(f"restarting {name}")
            self.supervisor.replace_program(name)
        if self.change.logrotate:
            write_atomic(self.paths.logrotate_conf, files["logrotate.conf"])
        if self.change.gateway:
            self._note("reloading the gateway (nginx.conf)")
            text = files[self.paths.nginx_conf.name]
            version = stamped_version(text)
            assert version is not None  # render_nginx stamps every file
            seconds = apply_gateway_file(
                self.paths, self.paths.nginx_conf, text, version=version,
                version_url=status_url(self.spec.gateway.status_port, "gateway"))
            self.progress(f"gateway runs nginx.conf {version} ({seconds:.2f}s, open streams "
                          "finish on the old workers)")

    def _reload_prometheus(self) -> None:
        url = f"http://127.0.0.1:{self.spec.prometheus.port}/-/reload"
        try:
            response = requests.post(url, timeout=30)
        except requests.RequestException as exc:
            raise ClusterError(f"Prometheus did not answer its reload at {url}: {exc}",
                               hint="see `fleet logs prometheus`; its new files are written "
                                    "and read at its next start") from exc
        if response.status_code != 200:
            raise ClusterError(f"Prometheus refused its reload ({response.status_code}): "
                               f"{response.text.strip()[:200]}",
                               hint="see `fleet logs prometheus`")

    def _record(self) -> None:
        """The new spec becomes the running one; the controller restarts on it."""
        ClusterState.from_plan(self.new.plan, self.spec_path).save(self.paths)
        write_atomic(self.paths.spec_json, self.new.rendered.files["spec.json"])
        if self.change.controller:
            self._note("restarting the controller on the new spec")
            self.supervisor.replace_program("controller")
            self._wait_controller()
        if self.change.gpu_exporter:
            self.supervisor.replace_program("gpu-exporter")
        self.progress(f"spec generation {self.generation} is the running one")

    # --- waits -----------------------------------------------------------------
    def _status(self) -> dict[str, bool | None]:
        view = controller_status(self.paths, self.state)
        return {} if view is None else {r.name: r.in_rotation for r in view.replicas}

    def _wait_others_in_rotation(self, name: str) -> None:
        deadline = time.monotonic() + OTHERS_IN_ROTATION_BOUND_S
        while True:
            rotation = self._status()
            out = [n for n, serving in rotation.items() if n != name and not serving]
            if rotation and not out:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"taking {name} out would leave fewer than all but one replica serving: "
                    f"{', '.join(out) or 'the controller'} "
                    f"{'is' if len(out) <= 1 else 'are'} not in rotation",
                    hint="see `fleet status`; bring them back (`fleet restart NAME`, "
                         "`fleet undrain NAME`), then `fleet apply` again")
            time.sleep(POLL_S)

    def _drain(self, name: str) -> tuple[float, int]:
        """Take ``name`` out and wait for its last request; (seconds, requests cut)."""
        started = time.monotonic()
        self.draining = name
        controller_call(self.paths, self.state, "POST", f"/replicas/{name}/drain",
                        required=True)
        self._wait_routed(name, False, ROUTED_OUT_BOUND_S,
                          f"the controller did not take {name} out of rotation within "
                          f"{ROUTED_OUT_BOUND_S:.0f}s", "see `fleet logs controller`")
        replica = self.state.replica(name)
        assert replica is not None
        deadline = started + self.spec.rollout.drain_timeout_s
        idle_reads, running = 0, 0
        while idle_reads < IDLE_READS:
            running = self._in_flight(replica.url)
            idle_reads = idle_reads + 1 if running == 0 else 0
            if time.monotonic() > deadline:
                log.warning("drain timeout replica=%s decision=stop anyway running=%d "
                            "reason=rollout.drain_timeout_s=%g", name, running,
                            self.spec.rollout.drain_timeout_s)
                return time.monotonic() - started, running
            time.sleep(POLL_S)
        return time.monotonic() - started, 0

    @staticmethod
    def _in_flight(url: str) -> int:
        try:
            response = requests.get(url + "/metrics", timeout=5)
        except requests.RequestException:
            return 0  # nothing answers: nothing of it can be cut
        count = in_flight(response.text) if response.status_code == 200 else None
        # A replica that shows no queue gauges is waited on for nothing.
        return count or 0

    def _wait_healthy(self, name: str, side: ClusterSide) -> None:
        replica = side.plan.replica(name)
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while time.monotonic() < deadline:
            state = self.supervisor.process(name).state
            if state == "FATAL":
                raise ClusterError(f"{name} exits as it starts; supervisord gave up (FATAL)")
            # Serving is what counts: supervisord calls a program RUNNING only
            # after its startsecs, and one that dies later is its job again.
            if state in ("STARTING", "RUNNING") and probe(replica.url + "/health").ok:
                return
            time.sleep(POLL_S)
        raise ClusterError(f"{name} was not healthy within startup_timeout_s="
                           f"{self.spec.startup_timeout_s}")

    def _undrain(self, name: str) -> float:
        """Put ``name`` back; seconds until it is in rotation (after a warm-up)."""
        started = time.monotonic()
        controller_call(self.paths, self.state, "POST", f"/replicas/{name}/undrain",
                        required=True)
        self.draining = None
        self._wait_routed(name, True, self.spec.startup_timeout_s,
                          f"{name} is healthy but did not rejoin rotation within "
                          f"startup_timeout_s={self.spec.startup_timeout_s}",
                          "see `fleet status` and `fleet logs controller`")
        return time.monotonic() - started

    def _wait_routed(self, name: str, routed: bool, bound_s: float, problem: str,
                     hint: str) -> None:
        """Until the controller says ``name`` is in rotation (or out), at most ``bound_s``."""
        deadline = time.monotonic() + bound_s
        while self._status().get(name) is not routed:
            if time.monotonic() > deadline:
                raise ClusterError(problem, hint=hint)
            time.sleep(POLL_S)

    def _wait_controller(self) -> None:
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while time.monotonic() < deadline:
            view = controller_status(self.paths, self.state)
            if view is not None and view.all_in_rotation and {
                    r.name for r in view.replicas} == {r.name for r in self.new.plan.replicas}:
                return
            time.sleep(POLL_S)
        raise ClusterError("the controller did not put every replica in rotation within "
                           f"startup_timeout_s={self.spec.startup_timeout_s} after its restart",
                           hint="see `fleet status` and `fleet logs controller`")

    def _save_generation(self, name: str, generation: str) -> None:
        state = ClusterState.load(self.paths) or self.state
        replace(state, replicas=tuple(
            replace(r, generation=generation) if r.name == name else r
            for r in state.replicas)).save(self.paths)
