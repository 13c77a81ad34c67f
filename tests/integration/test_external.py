"""engine: external: llm-fleet routes to, probes and scrapes replicas that
something else runs (the gateway container of docker-compose.yml), and leaves
them alone on `fleet down`."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from router.runtime.procs import descendants, process_alive
from tests.support.cli import fleet
from tests.support.fleet import spec_data, write_spec
from tests.support.harness import free_port, wait_for
from tests.support.sim import sim_replica

pytestmark = pytest.mark.integration


def _external_spec(tmp_path: Path, gateway: int, *replica_ports: int) -> Path:
    return write_spec(tmp_path, spec_data(
        tmp_path / "rt", engine="external", model={"served_name": "sim-model"},
        external_replicas=[{"address": f"127.0.0.1:{port}"} for port in replica_ports],
        gateway={"port": gateway}))


def _served_by(gateway: int, requests_sent: int) -> Counter[str]:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3}
    return Counter(
        requests.post(f"http://127.0.0.1:{gateway}/v1/chat/completions", json=body,
                      timeout=10).headers["X-Fleet-Replica"] for _ in range(requests_sent))


def test_fleet_up_routes_to_external_replicas(tmp_path: Path) -> None:
    with sim_replica() as first, sim_replica() as second:
        gateway = free_port()
        spec = _external_spec(tmp_path, gateway, first.port, second.port)
        up = fleet("up", "--spec", str(spec))
        assert up.returncode == 0, up.stderr
        try:
            status = yaml.safe_load(fleet("status", "--spec", str(spec), "--json").stdout)
            assert [r["device"] for r in status["replicas"]] == [
                f"external:127.0.0.1:{first.port}", f"external:127.0.0.1:{second.port}"]
            names = {p["name"] for p in status["processes"]}
            assert not any(n.startswith("replica-") for n in names), names
            assert set(_served_by(gateway, 20)) == {"replica-0", "replica-1"}
        finally:
            down = fleet("down", "--spec", str(spec))
        assert down.returncode == 0, down.stderr
        # Ours to route to, not ours to stop.
        assert first.process.poll() is None and second.process.poll() is None


def _gateway_answers(gateway: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{gateway}/v1/models", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_foreground_up_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The gateway container's command, `fleet up --foreground`, run as its PID 1
    would be: it serves through the replicas, and the SIGTERM of `docker stop`
    stops every program it started and nothing else."""
    with sim_replica() as first, sim_replica() as second:
        gateway = free_port()
        spec = _external_spec(tmp_path, gateway, first.port, second.port)
        with (tmp_path / "foreground.log").open("wb") as log, subprocess.Popen(
                [sys.executable, "-m", "router.cli", "up", "--foreground", "--spec", str(spec)],
                stdout=log, stderr=subprocess.STDOUT) as process:
            try:
                wait_for(lambda: _gateway_answers(gateway) or process.poll() is not None, 60,
                         "the foreground gateway to answer", interval=0.3)
                assert process.poll() is None, (tmp_path / "foreground.log").read_text()
                assert set(_served_by(gateway, 20)) == {"replica-0", "replica-1"}
                status = fleet("status", "--spec", str(spec), "--json")
                assert status.returncode == 0, status.stderr
                programs = descendants(process.pid)
                assert programs, "supervisord runs no program"
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=60) == 0, (tmp_path / "foreground.log").read_text()
            finally:
                if process.poll() is None:
                    process.kill()
        assert not [pid for pid in programs if process_alive(pid)]
        assert not _gateway_answers(gateway)
        # Ours to route to, not ours to stop.
        assert first.process.poll() is None and second.process.poll() is None
