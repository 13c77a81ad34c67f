"""`fleet controller run`: the controller process that supervisord runs."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import uvicorn

from router.config.spec import BUDGET_FOLDER, ClusterSpec
from router.controller.actuator import Actuator
from router.controller.admission import AdmissionInput, ShedBoard, queue_rate_window_s
from router.controller.api import KeysAccess, create_app
from router.controller.budget import (
    SEED_QUERY,
    BudgetBoard,
    BudgetInput,
    KeyBudgets,
    MtailCounters,
)
from router.controller.inputs import Input, PaceInput, PrometheusInput
from router.controller.metrics import ControllerMetrics
from router.controller.pace import PaceProber
from router.controller.processes import ProcessWatch
from router.controller.public import ClusterRecords
from router.controller.service import Controller, Member
from router.controller.signals import PrometheusClient
from router.disk.keys import load_store
from router.disk.paths import RuntimePaths, read_admin_token
from router.errors import ClusterError
from router.fleet_status import PublicRollout
from router.host.machine import nginx_run_user, shed_dir
from router.runtime.applying import read_rollout
from router.runtime.keys import apply_keys
from router.runtime.state import ClusterState
from router.runtime.supervise import Supervisor
from router.upstream import serving_addresses

log = logging.getLogger(__name__)


def _state(paths: RuntimePaths) -> ClusterState:
    state = ClusterState.load(paths)
    if state is None:
        raise ClusterError(f"no state.json in {paths.root}",
                           hint="the controller runs inside a cluster started by `fleet up`")
    return state


def _serving(paths: RuntimePaths) -> frozenset[str]:
    """Addresses the gateway routes to now, as the last controller left them."""
    try:
        return serving_addresses(paths.upstream_conf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return frozenset()


def _records(paths: RuntimePaths) -> ClusterRecords:
    """Read at each /fleet/status: `fleet apply` changes both while this runs."""
    try:
        state = ClusterState.load(paths)
    except ClusterError:
        state = None
    progress = read_rollout(paths)
    rollout = None if progress is None else PublicRollout(
        step=progress.step, generation=progress.generation, done=list(progress.done))
    return ClusterRecords(
        generations={r.name: r.generation for r in state.replicas} if state else {},
        rollout=rollout)


def _budget_input(spec: ClusterSpec, paths: RuntimePaths, folder: Path,
                  metrics: ControllerMetrics) -> BudgetInput:
    budgets = KeyBudgets(paths.api_keys, spec.budgets.tokens_per_min)
    seeder: Callable[[], Awaitable[Mapping[str, float]]] | None = None
    if spec.prometheus.enabled:
        prometheus = PrometheusClient(f"http://127.0.0.1:{spec.prometheus.port}",
                                      spec.controller.query_timeout_s)

        async def seed() -> dict[str, float]:
            try:
                return await prometheus.query(SEED_QUERY, label="key")
            finally:
                await prometheus.close()
        seeder = seed

    return BudgetInput(
        MtailCounters(f"http://127.0.0.1:{spec.gateway_metrics.log_exporter_port}/metrics",
                      spec.controller.query_timeout_s),
        budgets, BudgetBoard(folder), time.time, metrics, names=lambda: budgets.names,
        seeder=seeder)


def run(spec: ClusterSpec) -> None:
    # One line per probe is noise; decisions and reloads are what to read.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    paths = RuntimePaths(spec.runtime_dir)
    state = _state(paths)
    members = [Member(r.name, r.device, r.url) for r in state.replicas]
    metrics = ControllerMetrics()
    inputs: list[Input] = []
    if spec.prometheus.enabled:
        inputs.append(PrometheusInput(
            PrometheusClient(f"http://127.0.0.1:{spec.prometheus.port}",
                             spec.controller.query_timeout_s),
            spec.controller, time.time, metrics))
    flags = shed_dir(paths.root, nginx_run_user(), paths.shed_dir)
    if spec.budgets.enabled:
        inputs.append(_budget_input(spec, paths, flags / BUDGET_FOLDER, metrics))
    # Each replica's batch slots: what the pace probes and fair shares weigh.
    slots = {r.name: r.max_num_seqs for r in state.replicas if r.max_num_seqs is not None}
    if spec.priority.shed_queue_wait_s or spec.priority.fair_share:
        # Its own client: closing one input must not close another's.
        inputs.append(AdmissionInput(
            PrometheusClient(f"http://127.0.0.1:{spec.prometheus.port}",
                             spec.controller.query_timeout_s),
            ShedBoard(flags),
            spec.priority.shed_queue_wait_s,
            window=f"{queue_rate_window_s(spec.prometheus.scrape_interval_s)}s",
            interval_s=spec.controller.evaluate_interval_s, clock=time.time, metrics=metrics,
            fair_slots=slots if spec.priority.fair_share else None))
    # A pooling model generates no tokens for the pace probes to time.
    if spec.controller.pace.enabled and spec.model.runner == "generate":
        inputs.append(PaceInput(PaceProber({m.name: m.url for m in members},
                                           state.served_model_name, spec.controller.pace,
                                           slots=slots), metrics))
    # Under systemd there is no supervisord to ask (its units say the same).
    if paths.supervisor_socket.exists():
        inputs.append(ProcessWatch(Supervisor(paths, timeout=5.0).processes,
                                   [m.name for m in members], metrics,
                                   interval_s=spec.controller.probe_interval_s))
    controller = Controller(members, spec.controller, Actuator(spec.gateway, members, paths),
                            inputs, overrides_file=paths.overrides_json, warmup=state.warmup,
                            latency_memory_s=spec.controller.latency_window_s
                            + spec.prometheus.scrape_interval_s,
                            metrics=metrics, affinity=spec.gateway.affinity.keyed)
    controller.assume_warm(m.name for m in members if m.address in _serving(paths))
    app = create_app(controller, read_admin_token(paths), grafana_url=spec.console.grafana_url,
                     records=lambda: _records(paths),
                     keys=KeysAccess(read=lambda: load_store(paths.api_keys),
                                     apply=lambda store: apply_keys(spec, store)))
    # A gateway of a pair also answers its peer, on its own address there.
    hosts = ["127.0.0.1"] + ([spec.ha.unicast_src] if spec.ha.enabled and spec.ha.unicast_src
                             else [])
    log.info("controller for %d replicas on %s port %d", len(members), " and ".join(hosts),
             spec.controller.port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[_listening(host, spec.controller.port) for host in hosts])


def _listening(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
