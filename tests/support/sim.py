"""Start simulated replicas as real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import requests

from router.runtime.ports import free_port
from tests.support.harness import stop_process

# A bound, not a timing: the simulator answers in about a second, but a CI
# machine busy with CPU vLLM replicas has starved it for far longer.
START_TIMEOUT_S = 60.0
# A port picked free can be taken (an outgoing connection's local port)
# before the simulator binds it; a fresh port is then the fix.
PORT_ATTEMPTS = 3


@dataclass
class SimProcess:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def faults(self, **faults: object) -> requests.Response:
        return requests.post(f"{self.url}/sim/faults", json=faults, timeout=5)


class _PortTaken(Exception):
    pass


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _tail(log: IO[bytes], lines: int = 15) -> str:
    log.seek(0)
    text = log.read().decode(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(nothing on stderr)"


def _wait_healthy(sim: SimProcess, log: IO[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _healthy(sim.url):
            return
        code = sim.process.poll()
        if code is not None:
            tail = _tail(log)
            if "address already in use" in tail.lower():
                raise _PortTaken(tail)
            raise AssertionError(f"the simulator on port {sim.port} exited with status {code} "
                                 f"before answering /health; its stderr ends:\n{tail}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {START_TIMEOUT_S:.0f}s waiting for the simulator on "
                         f"port {sim.port} to answer /health; its stderr ends:\n{_tail(log)}")


@contextlib.contextmanager
def sim_replica(*flags: str, wait: bool = True, port: int | None = None) -> Iterator[SimProcess]:
    with tempfile.TemporaryFile() as log:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            chosen = port or free_port()
            log.seek(0)
            log.truncate()
            process = subprocess.Popen(
                [sys.executable, "-m", "router.cli", "sim", "serve", "--port", str(chosen),
                 *flags], stdout=subprocess.DEVNULL, stderr=log)
            sim = SimProcess(process, chosen)
            try:
                if wait:
                    _wait_healthy(sim, log)
                break
            except _PortTaken as exc:
                stop_process(process, signal.SIGTERM)
                if port is not None or attempt == PORT_ATTEMPTS:
                    raise AssertionError(
                        f"the simulator could not bind port {chosen}:\n{exc}") from exc
            except BaseException:
                stop_process(process, signal.SIGTERM)
                raise
        try:
            yield sim
        finally:
            stop_process(process, signal.SIGTERM)
