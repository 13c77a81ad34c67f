"""Fleets and peer gateways that a scenario or drill brings up and takes down.

A scenario's fleet is a real `fleet up` (nginx, Prometheus, the controller,
simulated replicas) from a spec written into the scenario's work folder, on
free loopback ports, so what is measured is what a user runs. Peers
(vllm-router, LiteLLM's proxy) run from their own virtualenv
(`make peers`), since their dependencies do not share one with vLLM's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from router.config.spec import ClusterSpec, load_spec
from router.errors import ClusterError
from router.runtime import cluster
from router.runtime.ports import free_port, free_port_block

Progress = Callable[[str], None]

# Where `make peers` installs vllm-router and LiteLLM; FLEET_PEERS_DIR moves it.
PEERS_DIR_ENV = "FLEET_PEERS_DIR"
PEER_READY_TIMEOUT_S = 90.0

@dataclass(frozen=True)
class Endpoint:
    """Where a load goes, and the API key it needs (None: no key)."""

    url: str
    key: str | None = None


@dataclass(frozen=True)
class Fleet:
    """A running fleet: where its gateway and its replicas answer."""

    spec_path: Path
    spec: ClusterSpec

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.gateway.port}"

    @property
    def replica_urls(self) -> list[str]:
        count = self.spec.replicas
        assert isinstance(count, int)
        return [f"http://127.0.0.1:{self.spec.ports.replica_base + i}" for i in range(count)]

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.controller.port}"


def sim_fleet_spec(runtime_dir: Path, replicas: int, sim: dict[str, Any],
                   balance: str = "least_conn", controller: bool = True,
                   controller_settings: dict[str, Any] | None = None,
                   **sections: dict[str, Any]) -> dict[str, Any]:
    """A simulated fleet's spec on free ports; ``sections`` override spec keys,
    ``controller_settings`` the controller's (``controller`` turns it on or off)."""
    spec: dict[str, Any] = {
        "engine": "sim", "replicas": replicas, "runtime_dir": str(runtime_dir),
        "startup_timeout_s": 60,
        "ports": {"replica_base": free_port_block(replicas)},
        "gateway": {"port": free_port(), "status_port": free_port(), "balance": balance},
        "prometheus": {"port": free_port()},
        "controller": {"enabled": controller, "port": free_port(),
                       **(controller_settings or {})},
        "gateway_metrics": {"nginx_exporter_port": free_port(),
                            "log_exporter_port": free_port()},
        "gpu_exporter": {"enabled": False},
        "console": {"enabled": False},
        "sim": sim,
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


@contextlib.contextmanager
def running_fleet(spec_data: dict[str, Any], spec_path: Path,
                  progress: Progress) -> Iterator[Fleet]:
    """`fleet up` from ``spec_data``; `fleet down` on the way out, whatever happens."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(spec_data, sort_keys=False))
    spec = load_spec(spec_path)
    try:
        cluster.up(spec_path, progress)
        yield Fleet(spec_path, spec)
    finally:
        cluster.down(spec, lambda _msg: None)


def peers_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get(PEERS_DIR_ENV) or Path(base) / "llm-fleet" / "peers")


def peer_executable(name: str) -> Path | None:
    """A peer's command from the peers virtualenv, else from PATH."""
    candidate = peers_dir() / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _wait_ready(endpoint: Endpoint, process: subprocess.Popen[bytes], what: str,
                log: Path) -> None:
    headers = {"Authorization": f"Bearer {endpoint.key}"} if endpoint.key else {}
    deadline = time.monotonic() + PEER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"{what} exited with status {process.returncode} while starting",
                               hint=f"see its log: {log}")
        try:
            if requests.get(f"{endpoint.url}/v1/models", headers=headers,
                            timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ClusterError(f"{what} did not answer /v1/models within {PEER_READY_TIMEOUT_S:g}s",
                       hint=f"see its log: {log}")


@contextlib.contextmanager
def _peer_process(argv: list[str], endpoint: Endpoint, what: str, log: Path,
                  env: dict[str, str] | None = None) -> Iterator[Endpoint]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            _wait_ready(endpoint, process, what, log)
            yield endpoint
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 15)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait()


@contextlib.contextmanager
def vllm_router(replica_urls: list[str], policy: str, work_dir: Path) -> Iterator[Endpoint]:
    """vLLM's own router (PyPI vllm-router) in front of ``replica_urls``."""
    executable = peer_executable("vllm-router")
    if executable is None:
        raise ClusterError("vllm-router is not installed", hint="run `make peers`")
    port = free_port()
    argv = [str(executable), "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
            "--log-level", "warning", "--prometheus-port", str(free_port()),
            "--worker-urls", *replica_urls]
    with _peer_process(argv, Endpoint(f"http://127.0.0.1:{port}"), "vllm-router",
                       work_dir / f"vllm-router-{policy}.log") as endpoint:
        yield endpoint


@contextlib.contextmanager
def litellm_proxy(replica_urls: list[str], model: str, work_dir: Path) -> Iterator[Endpoint]:
    """LiteLLM's proxy (PyPI litellm[proxy]) with one deployment per replica."""
    executable = peer_executable("litellm")
    if executable is None:
        raise ClusterError("LiteLLM's proxy is not installed", hint="run `make peers`")
    config = work_dir / "litellm.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": model,
                        "litellm_params": {"model": f"hosted_vllm/{model}",
                                           "api_base": f"{url}/v1", "api_key": "none"}}
                       for url in replica_urls],
        # Its default; the one its docs recommend for production.
        "router_settings": {"routing_strategy": "simple-shuffle"},
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }))
    # The proxy refuses to start without a master key; clients send it.
    master_key = "sk-bench-" + secrets.token_hex(16)
    port = free_port()
    argv = [str(executable), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    with _peer_process(argv, Endpoint(f"http://127.0.0.1:{port}", master_key), "LiteLLM proxy",
                       work_dir / "litellm.log",
                       env={"LITELLM_MASTER_KEY": master_key, "LITELLM_LOG": "ERROR",
                            "LITELLM_TELEMETRY": "False"}) as endpoint:
        yield endpoint
