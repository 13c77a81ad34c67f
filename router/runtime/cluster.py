"""Bringing a cluster up, looking at it, and taking it down.

The steps of `fleet up` are ordered so that anything that can be wrong with
the spec, the machine or the model is found before a single process starts:
validate the spec, find devices, resolve the model from local files, check
ports, render and `nginx -t` the configs; only then start supervisord.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import requests
from pydantic import ValidationError

from router.config.plan import ClusterPlan, build_plan, choose_engine
from router.config.spec import (
    REPLICA_LISTING_PATH,
    ClusterSpec,
    load_spec,
    resolve_engine_settings,
)
from router.config.topology import own_listing_url
from router.disk.paths import (
    DiskUse,
    RuntimePaths,
    adopt_pair_token,
    disk_use,
    ensure_admin_token,
    read_admin_token,
)
from router.errors import ClusterError, ModelError
from router.fleet_status import FleetStatus
from router.host.devices import Inventory, discover
from router.host.machine import nginx_run_user, shed_dir
from router.models import store as model_store
from router.runtime import discovery
from router.runtime.applying import RolloutProgress, read_rollout
from router.runtime.configs import write_checked
from router.runtime.health import Probe, port_in_use, probe
from router.runtime.procs import Unsupervised, descendants, left_by_supervisor, process_alive
from router.runtime.state import ClusterState
from router.runtime.supervise import ProcessInfo, Supervisor

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DUMMY_BANNER = (
    "!" * 72,
    "!! DUMMY WEIGHTS (model.load_format: dummy): every answer is random noise.",
    "!! This fleet measures the box (memory, kernels, throughput); it serves no",
    "!! one. Set model.load_format: auto and prepare the real model to serve.",
    "!" * 72,
)


def make_plan(spec: ClusterSpec, inventory: Inventory | None = None,
              python: str | None = None, require_model: bool = True) -> ClusterPlan:
    """Spec + devices + locally resolved model -> plan. Raises before any side effect.

    With ``require_model=False`` (rendering only) a model that is not prepared
    yet is named as the spec gives it instead of failing.
    """
    inventory = inventory or discover()
    # A gateway host routes to what its replica hosts list right now.
    spec = discovery.discover(spec)
    engine = choose_engine(spec, inventory)
    settings = resolve_engine_settings(spec, engine)
    model_path = settings.model
    if engine in ("gpu", "cpu"):
        try:
            model_path = model_store.resolve(settings.model, spec.model.cache_dir,
                                             dummy=settings.dummy)
        except ModelError:
            if require_model:
                raise
    return build_plan(spec, settings, inventory, model_path, python or sys.executable)


def busy_ports(plan: ClusterPlan) -> list[str]:
    """The plan's ports that another program holds, as "port (spec key)"."""
    spec = plan.spec
    hosts = {"gateway.port": spec.gateway.host,
             "topology.listing_port": spec.topology.advertised_host}
    wanted = [(hosts.get(key, "127.0.0.1"), port, key)
              for key, port in spec.service_ports().items()
              if key != "gpu_exporter.port" or plan.gpu_exporter]
    wanted += [(r.host, r.port, f"{r.name} (ports.replica_base + {r.index})")
               for r in plan.replicas if not r.external]
    return [f"{port} ({key})" for host, port, key in wanted if port_in_use(host, port)]


def _check_ports_free(plan: ClusterPlan) -> None:
    busy = busy_ports(plan)
    if busy:
        raise ClusterError(
            "port(s) already in use by another program: " + ", ".join(busy),
            hint="stop that program, or move the port in the spec (--spec FILE)",
        )


def _prepare_runtime(plan: ClusterPlan, paths: RuntimePaths) -> None:
    paths.create()
    if plan.spec.ha.pair_token_file is not None:
        adopt_pair_token(paths, plan.spec.ha.pair_token_file)
    ensure_admin_token(paths)
    write_checked(plan, paths)


@dataclass(frozen=True)
class ReplicaStatus:
    """What `fleet status` shows for one replica."""

    name: str
    device: str
    url: str
    state: str
    pid: int
    uptime_s: int
    health: Probe
    # The spec generation it runs (ClusterSpec.generation).
    generation: str | None = None


@dataclass(frozen=True)
class ClusterStatus:
    running: bool
    gateway_url: str | None
    gateway_health: Probe | None
    replicas: list[ReplicaStatus]
    processes: list[ProcessInfo]
    # The controller's GET /status, or None when it does not answer.
    controller: FleetStatus | None = None
    disk: DiskUse | None = None
    # With supervisord gone: the processes it had started that still run.
    unsupervised: list[Unsupervised] = field(default_factory=list)
    # The progress of a `fleet apply` under way.
    rollout: RolloutProgress | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "gateway_url": self.gateway_url,
            "gateway_health": self.gateway_health.status if self.gateway_health else None,
            "replicas": [
                {"name": r.name, "device": r.device, "url": r.url, "state": r.state,
                 "pid": r.pid, "uptime_s": r.uptime_s, "health": r.health.status,
                 "health_error": r.health.error, "generation": r.generation}
                for r in self.replicas
            ],
            "processes": [
                {"name": p.name, "state": p.state, "pid": p.pid, "uptime_s": p.uptime_s}
                for p in self.processes
            ],
            "controller": self.controller.model_dump(mode="json") if self.controller else None,
            "disk_bytes": asdict(self.disk) if self.disk else None,
            "unsupervised": [asdict(p) for p in self.unsupervised],
            "rollout": asdict(self.rollout) if self.rollout else None,
        }


def status(spec: ClusterSpec) -> ClusterStatus:
    paths = RuntimePaths(spec.runtime_dir)
    supervisor = Supervisor(paths)
    state = ClusterState.load(paths)
    if state is None:
        return ClusterStatus(False, None, None, [], [])
    if not supervisor.is_running():
        left = unsupervised(paths)
        gateway_health = probe(state.gateway_url + "/health", timeout_s=5.0) if left else None
        return ClusterStatus(False, state.gateway_url if left else None, gateway_health, [], [],
                             unsupervised=left)
    processes = supervisor.processes()
    by_name = {p.name: p for p in processes}
    replicas = []
    for replica in state.replicas:
        info = by_name.get(replica.name)
        replicas.append(ReplicaStatus(
            name=replica.name, device=replica.device, url=replica.url,
            state=info.state if info else "UNKNOWN", pid=info.pid if info else 0,
            uptime_s=info.uptime_s if info else 0,
            health=probe(replica.url + "/health", timeout_s=2.0),
            generation=replica.generation,
        ))
    gateway_url = state.gateway_url
    return ClusterStatus(True, gateway_url, probe(gateway_url + "/health", timeout_s=5.0),
                         replicas, processes, controller_status(paths, state), disk_use(paths),
                         rollout=read_rollout(paths))


def unsupervised(paths: RuntimePaths) -> list[Unsupervised]:
    """Processes of this runtime dir that run on without their supervisord."""
    return left_by_supervisor(str(paths.root.resolve()), str(paths.supervisor_socket))


def controller_status(paths: RuntimePaths, state: ClusterState) -> FleetStatus | None:
    """The controller's GET /status, or None when it does not answer or answers
    what this version cannot read (a controller of another version: restart it)."""
    view = controller_call(paths, state, "GET", "/status")
    try:
        return None if view is None else FleetStatus.model_validate(view)
    except ValidationError as exc:
        log.warning("unreadable controller status (%d field errors); restart the controller "
                    "to run this version", exc.error_count())
        return None


def controller_call(paths: RuntimePaths, state: ClusterState, method: str, path: str,
                    body: dict[str, Any] | None = None,
                    required: bool = False) -> dict[str, Any] | None:
    """One admin API call with the cluster's token.

    Returns the JSON answer; on any failure returns None, or raises ClusterError
    with the reason when ``required``.
    """
    try:
        url = state.controller_url
        if url is None:
            raise ClusterError("this cluster runs without the controller",
                               hint="set controller.enabled: true in the spec")
        try:
            response = requests.request(
                method, url + path, json=body, timeout=10,
                headers={"Authorization": f"Bearer {read_admin_token(paths)}"})
        except requests.RequestException as exc:
            raise ClusterError(f"the controller at {url} did not answer: {exc}",
                               hint="see `fleet logs controller`") from exc
        if response.status_code != 200:
            raise ClusterError(f"the controller answered {response.status_code}: "
                               f"{_detail(response)}")
    except ClusterError:
        if required:
            raise
        return None
    result: dict[str, Any] = response.json()
    return result


def _detail(response: requests.Response) -> str:
    """FastAPI's error detail as one readable line ("weight: must be <= 100")."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text.strip()
    if isinstance(detail, list):
        return "; ".join(f"{e.get('loc', ['?'])[-1]}: {e.get('msg')} (got {e.get('input')!r})"
                         for e in detail if isinstance(e, dict))
    return str(detail)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(text[-lines:])


def last_log_line(path: Path) -> str:
    lines = [line for line in log_tail(path, 40).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty)"


def _wait_healthy(plan: ClusterPlan, paths: RuntimePaths, supervisor: Supervisor,
                  progress: Progress) -> None:
    start = time.monotonic()
    deadline = start + plan.spec.startup_timeout_s
    healthy: dict[str, float] = {}
    last_note = 0.0
    while True:
        elapsed = time.monotonic() - start
        states = {p.name: p for p in supervisor.processes()}
        for name, info in states.items():
            if info.state == "FATAL":
                raise ClusterError(
                    f"{name} keeps exiting and supervisord gave up on it; last log lines:\n"
                    + log_tail(paths.log(name)),
                    hint=f"read `fleet logs {name}`, fix the cause, then `fleet up` again",
                )
        for replica in plan.replicas:
            if replica.name not in healthy and probe(replica.url + "/health").ok:
                healthy[replica.name] = elapsed
                progress(f"{replica.name} on {replica.device} healthy after {elapsed:.0f}s")
        if len(healthy) == len(plan.replicas) and plan.spec.topology.role == "replicas":
            listing = own_listing_url(plan.spec.topology)
            if probe(listing).ok:
                progress(f"replica host ready after {elapsed:.0f}s: gateway hosts list "
                         f"{listing.removesuffix(REPLICA_LISTING_PATH)} in "
                         "topology.replica_hosts")
                return
        elif len(healthy) == len(plan.replicas):
            # With keys on, /v1/ refuses a keyless probe; /health still goes
            # through the upstream to a replica.
            route = "/health" if plan.spec.auth.enabled else "/v1/models"
            answer = probe(plan.gateway_url + route, timeout_s=5.0)
            if answer.ok and _controller_ready(plan, paths):
                progress(f"gateway {plan.gateway_url} answers {route} after {elapsed:.0f}s")
                return
        if time.monotonic() > deadline:
            waiting = [r.name for r in plan.replicas if r.name not in healthy]
            detail = "\n".join(f"--- {n}\n{log_tail(paths.log(n))}" for n in waiting)
            raise ClusterError(
                f"not healthy within startup_timeout_s={plan.spec.startup_timeout_s}: "
                f"{', '.join(waiting) or 'gateway'}\n{detail}",
                hint="raise startup_timeout_s in the spec if the machine is just slow",
            )
        if elapsed - last_note >= 15:
            waiting = [r.name for r in plan.replicas if r.name not in healthy]
            if waiting:
                progress(f"waiting for {', '.join(waiting)} ({elapsed:.0f}s)")
            last_note = elapsed
        time.sleep(0.5)


def _controller_ready(plan: ClusterPlan, paths: RuntimePaths) -> bool:
    """True once the controller has put every replica in rotation (or is off)."""
    if not plan.spec.controller.enabled:
        return True
    view = controller_status(paths, ClusterState.from_plan(plan, None))
    return view is not None and view.all_in_rotation


def _prepare(spec_path: Path | None, progress: Progress,
             inventory: Inventory | None) -> tuple[ClusterPlan, RuntimePaths, Supervisor]:
    spec = load_spec(spec_path)
    paths = RuntimePaths(spec.runtime_dir)
    supervisor = Supervisor(paths)
    if supervisor.is_running():
        raise ClusterError(f"a cluster is already running from {paths.root}",
                           hint="`fleet apply --spec FILE` changes it to this spec, replica "
                                "by replica (`--dry-run` shows the plan); `fleet down` stops it")
    left = unsupervised(paths)
    if left:
        raise ClusterError(
            f"{len(left)} process(es) of an earlier cluster in {paths.root} still run without "
            f"their supervisord: {_names(left)}",
            hint="`fleet down` stops them; then `fleet up` again")
    plan = make_plan(spec, inventory)
    _check_ports_free(plan)
    progress(f"engine {plan.engine.engine}: {len(plan.replicas)} replica(s) of "
             f"{plan.engine.model} as '{plan.engine.served_model_name}'")
    if spec.topology.role != "both":
        progress(f"role {spec.topology.role}: "
                 + ", ".join(f"{r.name} at {r.address}" for r in plan.replicas))
    if plan.engine.dummy:
        for line in DUMMY_BANNER:
            progress(line)
    _prepare_runtime(plan, paths)
    ClusterState.from_plan(plan, spec_path).save(paths)
    progress(f"configs written to {paths.config_dir} and checked with nginx -t")
    return plan, paths, supervisor


def prepare_only(spec_path: Path | None, progress: Progress) -> None:
    """Render, check and record the cluster without starting anything (systemd)."""
    _prepare(spec_path, progress, None)


def up_foreground(spec_path: Path | None, progress: Progress) -> NoReturn:
    """Render and check like `up`, then become supervisord (never returns).

    For containers: whatever watches this process watches the cluster, and
    health is that watcher's job (a compose healthcheck on the gateway's
    /health). systemd units use `prepare_only` and one unit per program.
    """
    _plan, _paths, supervisor = _prepare(spec_path, progress, None)
    progress("running supervisord in the foreground")
    supervisor.exec_foreground()


def up(spec_path: Path | None, progress: Progress,
       inventory: Inventory | None = None) -> ClusterPlan:
    """Start the cluster the spec describes and wait until it serves."""
    plan, paths, supervisor = _prepare(spec_path, progress, inventory)
    supervisor.start()
    progress(f"supervisord started; logs in {paths.logs_dir}")
    try:
        _wait_healthy(plan, paths, supervisor, progress)
    except (ClusterError, KeyboardInterrupt):
        progress("stopping what was started")
        supervisor.shutdown()
        raise
    return plan


def restart(spec: ClusterSpec, name: str, progress: Progress) -> None:
    """Restart one supervised program (out of FATAL too) and wait until it is back.

    Nothing else is touched: the gateway keeps routing to the other replicas
    and the controller takes this one back in once it answers.
    """
    paths = RuntimePaths(spec.runtime_dir)
    supervisor = Supervisor(paths)
    state = ClusterState.load(paths)
    if state is None or not supervisor.is_running():
        raise ClusterError(f"no cluster is running from {paths.root} under supervisord",
                           hint="`fleet status` says what runs; under systemd: "
                                "systemctl restart llm-fleet-replica@N")
    known = [p.name for p in supervisor.processes()]
    if name not in known:
        raise ClusterError(f"no program named {name!r} in this cluster",
                           hint="choose one of: " + ", ".join(known))
    before = supervisor.restart_process(name)
    progress(f"{name} was {before}; started again")
    replica = next((r for r in state.replicas if r.name == name), None)
    deadline = time.monotonic() + spec.startup_timeout_s
    while time.monotonic() < deadline:
        info = supervisor.process(name)
        if info.state in ("FATAL", "BACKOFF"):
            raise ClusterError(f"{name} failed to start again ({info.state}); last log lines:\n"
                               + log_tail(paths.log(name)),
                               hint=f"read `fleet logs {name}`, fix the cause, then "
                                    f"`fleet restart {name}` again")
        if info.state == "RUNNING" and (replica is None or probe(replica.url + "/health").ok):
            progress(f"{name} is {'healthy' if replica else 'running'} again; "
                     + ("the controller takes it back in after its warm-up"
                        if replica else "nothing else was touched"))
            return
        time.sleep(0.5)
    raise ClusterError(f"{name} did not come back within startup_timeout_s="
                       f"{spec.startup_timeout_s}", hint=f"see `fleet logs {name}`")


def down(spec: ClusterSpec, progress: Progress) -> list[int]:
    """Stop everything; return pids that outlived supervisord (should be none)."""
    paths = RuntimePaths(spec.runtime_dir)
    supervisor = Supervisor(paths)
    pid = supervisor.pid()
    if pid is None:
        orphans = unsupervised(paths)
        if not orphans:
            progress(f"no cluster is running from {paths.root}")
            return []
        progress(f"supervisord is gone (killed or crashed); stopping the {len(orphans)} "
                 f"process(es) it left running: {_names(orphans)}")
        killed = stop_unsupervised(orphans)
        progress("stopped")
        return killed
    before = descendants(pid)
    progress(f"stopping {len(supervisor.processes())} program(s)")
    supervisor.shutdown()
    deadline = time.monotonic() + 10
    left = before
    while time.monotonic() < deadline:
        left = [p for p in before if process_alive(p)]
        if not left:
            break
        time.sleep(0.2)
    for leftover in left:
        log.warning("process outlived the cluster pid=%d; killing it", leftover)
        try:
            os.kill(leftover, 9)
        except ProcessLookupError:
            pass
    # A class shed when the controller stopped must not be shed by the next gateway.
    shutil.rmtree(shed_dir(paths.root, nginx_run_user(), paths.shed_dir), ignore_errors=True)
    progress("stopped")
    return left


def _names(processes: list[Unsupervised]) -> str:
    counts: dict[str, int] = {}
    for process in processes:
        counts[process.program] = counts.get(process.program, 0) + 1
    return ", ".join(name if n == 1 else f"{name} ({n} processes)"
                     for name, n in sorted(counts.items()))


def stop_unsupervised(processes: list[Unsupervised], grace_s: float = 30.0) -> list[int]:
    """Stop what a dead supervisord left, as it would have; return the pids killed.

    nginx gets QUIT (its streams finish), the rest TERM; whatever is alive
    after ``grace_s`` is killed. Returns nothing when all stopped in time.
    """
    for process in processes:
        sig = signal.SIGQUIT if process.program == "gateway" else signal.SIGTERM
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    alive = [p.pid for p in processes]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if process_alive(pid)]
    for pid in alive:
        log.warning("process outlived its stop signal by %.0fs pid=%d; killing it", grace_s, pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive
