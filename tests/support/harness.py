"""Start real nginx and Prometheus, rendered exactly as `fleet up` renders them,
on loopback ports chosen free at run time."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from router.config.plan import ClusterPlan, build_plan
from router.config.spec import parse_spec, resolve_engine_settings
from router.disk.paths import RuntimePaths
from router.host.machine import detect
from router.render.programs import gateway_program, prometheus_program
from router.runtime.configs import write_checked
from router.runtime.ports import free_port, free_port_block  # noqa: F401  (re-exported for tests)
from tests.support.fakes import cpu_inventory
from tests.support.fleet import merged, spec_data


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def plan_for(runtime_dir: Path, replicas: int, replica_base: int, **spec: Any) -> ClusterPlan:
    """A CPU plan whose replica ports are replica_base + i, other ports free."""
    data = spec_data(runtime_dir, replicas, "cpu", **merged(
        {"ports": {"replica_base": replica_base}, "gateway": {"worker_processes": 1}}, spec))
    parsed = parse_spec(data)
    settings = resolve_engine_settings(parsed, "cpu")
    return build_plan(parsed, settings, cpu_inventory(2), "/models/test", "python3")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Running:
    plan: ClusterPlan
    paths: RuntimePaths
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return self.plan.gateway_url


def stop_process(process: subprocess.Popen[bytes], sig: int) -> None:
    """Stop with sig, killed if it outlasts 15 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def gateway(plan: ClusterPlan) -> Iterator[Running]:
    """Render the cluster's configs, `nginx -t` them and run the gateway program."""
    paths = RuntimePaths(plan.spec.runtime_dir)
    write_checked(plan, paths)
    program = gateway_program(paths, detect())
    process = subprocess.Popen(program.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _port_open(plan.spec.gateway.port), 30, "nginx to listen")
        yield Running(plan, paths, process)
    finally:
        stop_process(process, signal.SIGQUIT)


@contextlib.contextmanager
def prometheus(plan: ClusterPlan) -> Iterator[Running]:
    """Run Prometheus with the rendered prometheus.yml."""
    paths = RuntimePaths(plan.spec.runtime_dir)
    paths.create()  # Prometheus's data folder
    write_checked(plan, paths)
    program = prometheus_program(plan, paths, detect())
    log = paths.log("prometheus").open("wb")
    process = subprocess.Popen(program.argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{plan.spec.prometheus.port}"
    try:
        wait_for(lambda: prometheus_ready(url), 30, "Prometheus to be ready", interval=0.3)
        yield Running(plan, paths, process)
    finally:
        stop_process(process, signal.SIGTERM)
        log.close()


def prometheus_ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False
