"""Start simulated replicas as real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from tests.support.harness import free_port, wait_for


@dataclass
class SimProcess:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def faults(self, **faults: object) -> requests.Response:
        return requests.post(f"{self.url}/sim/faults", json=faults, timeout=5)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def sim_replica(*flags: str, wait: bool = True, port: int | None = None) -> Iterator[SimProcess]:
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "sim", "serve", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim = SimProcess(process, port)
    try:
        if wait:
            wait_for(lambda: _healthy(sim.url), 20, "the simulator to answer /health")
        yield sim
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
