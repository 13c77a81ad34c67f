"""The one way tests run a whole cluster: `fleet up` as a user runs it, from a
spec on free loopback ports, and `fleet down` on the way out, even when
`fleet up` failed half-way (it may have started nginx before a replica
failed).

    with running_fleet(tmp / "obs", replicas=2, controller={"evaluate_interval_s": 1}) as f:
        requests.post(f.url + "/v1/chat/completions", json=...)

``spec_data`` gives the spec alone (tests of `fleet up`'s refusals);
``Fleets`` starts several in one test and stops them all. Overrides merge
into the base section by section, so a test names only what it changes.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from router.disk.paths import RuntimePaths
from router.runtime.ports import free_port, free_port_block
from tests.support.cli import fleet

LOOPBACK = "http://127.0.0.1"


def gateway_metrics_ports() -> dict[str, int]:
    """The spec's gateway_metrics section with free ports for both exporters."""
    return {"nginx_exporter_port": free_port(), "log_exporter_port": free_port()}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, mappings merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def spec_data(runtime_dir: Path, replicas: int | str = 2, engine: str = "sim",
              **overrides: Any) -> dict[str, Any]:
    """A cluster spec whose every port is free now; Prometheus scrapes every
    second so a test waits seconds, not minutes, for a signal."""
    base: dict[str, Any] = {
        "engine": engine, "runtime_dir": str(runtime_dir),
        "gateway": {"port": free_port(), "status_port": free_port()},
        "prometheus": {"port": free_port(), "scrape_interval_s": 1},
        "controller": {"port": free_port()},
        "gateway_metrics": gateway_metrics_ports(),
    }
    if engine != "external":
        base["replicas"] = replicas
        # A bad count is the test's input: the spec is written, `fleet up` refuses it.
        if isinstance(replicas, int) and replicas > 0:
            base["ports"] = {"replica_base": free_port_block(replicas)}
    return merged(base, overrides)


def write_spec(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass(frozen=True)
class RunningFleet:
    """A cluster `fleet up` started, and where each of its parts answers."""

    spec: Path
    data: dict[str, Any]
    up: subprocess.CompletedProcess[str]

    @property
    def paths(self) -> RuntimePaths:
        return RuntimePaths(Path(self.data["runtime_dir"]))

    @property
    def url(self) -> str:
        return f"{LOOPBACK}:{self.data['gateway']['port']}"

    @property
    def status_url(self) -> str:
        return f"{LOOPBACK}:{self.data['gateway']['status_port']}"

    @property
    def admin_url(self) -> str:
        return f"{LOOPBACK}:{self.data['controller']['port']}"

    @property
    def prometheus_url(self) -> str:
        return f"{LOOPBACK}:{self.data['prometheus']['port']}"

    @property
    def replica_ports(self) -> list[int]:
        base = self.data["ports"]["replica_base"]
        return [base + i for i in range(self.data["replicas"])]

    @property
    def replica_urls(self) -> list[str]:
        return [f"{LOOPBACK}:{port}" for port in self.replica_ports]

    @property
    def ports(self) -> list[int]:
        """Every port the cluster listens on (the exporters' aside)."""
        return [self.data["gateway"]["port"], self.data["gateway"]["status_port"],
                self.data["prometheus"]["port"], self.data["controller"]["port"],
                *(self.replica_ports if "ports" in self.data else [])]

    @functools.cached_property
    def admin_token(self) -> str:
        return self.paths.admin_token.read_text().strip()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`fleet ARGS --spec SPEC` against this cluster."""
        return fleet(*args, "--spec", str(self.spec), timeout=timeout)


@contextlib.contextmanager
def running_fleet(folder: Path, replicas: int = 2, engine: str = "sim",
                  before_up: Callable[[Path], None] | None = None, up_timeout: float = 120,
                  **overrides: Any) -> Iterator[RunningFleet]:
    """`fleet up` a cluster from ``spec_data`` in ``folder``; ``before_up`` gets the
    spec file first (keys made before a cluster exists apply at `fleet up`)."""
    data = spec_data(folder / "rt", replicas, engine, **overrides)
    spec = write_spec(folder, data)
    try:
        if before_up is not None:
            before_up(spec)
        up = fleet("up", "--spec", str(spec), timeout=up_timeout)
        assert up.returncode == 0, f"fleet up failed:\n{up.stdout}\n{up.stderr}"
        yield RunningFleet(spec, data, up)
    finally:
        fleet("down", "--spec", str(spec), timeout=180)


class Fleets:
    """Several clusters in one test or module, every one stopped by ``close``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stack = contextlib.ExitStack()
        self.count = 0

    def start(self, replicas: int = 2, **overrides: Any) -> RunningFleet:
        self.count += 1
        return self.stack.enter_context(
            running_fleet(self.folder / f"fleet{self.count}", replicas, **overrides))

    def close(self) -> None:
        self.stack.close()
