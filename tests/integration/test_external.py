"""engine: external: llm-fleet routes to, probes and scrapes replicas that
something else runs (the gateway container of docker-compose.yml), and leaves
them alone on `fleet down`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.cli import fleet
from tests.support.harness import free_port, gateway_metrics_ports
from tests.support.sim import sim_replica

pytestmark = pytest.mark.integration


def test_fleet_up_routes_to_external_replicas(tmp_path: Path) -> None:
    with sim_replica() as first, sim_replica() as second:
        gateway = free_port()
        spec = tmp_path / "spec.yaml"
        spec.write_text(yaml.safe_dump({
            "engine": "external", "runtime_dir": str(tmp_path / "rt"),
            "model": {"served_name": "sim-model"},
            "external_replicas": [{"address": f"127.0.0.1:{first.port}"},
                                  {"address": f"127.0.0.1:{second.port}"}],
            "gateway": {"port": gateway, "status_port": free_port()},
            "prometheus": {"port": free_port()}, "controller": {"port": free_port()},
            "gateway_metrics": gateway_metrics_ports(),
        }))
        up = fleet("up", "--spec", str(spec))
        assert up.returncode == 0, up.stderr
        try:
            status = yaml.safe_load(fleet("status", "--spec", str(spec), "--json").stdout)
            assert [r["device"] for r in status["replicas"]] == [
                f"external:127.0.0.1:{first.port}", f"external:127.0.0.1:{second.port}"]
            names = {p["name"] for p in status["processes"]}
            assert not any(n.startswith("replica-") for n in names), names
            body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3}
            served = Counter(
                requests.post(f"http://127.0.0.1:{gateway}/v1/chat/completions", json=body,
                              timeout=10).headers["X-Fleet-Replica"] for _ in range(20))
            assert set(served) == {"replica-0", "replica-1"}
        finally:
            down = fleet("down", "--spec", str(spec))
        assert down.returncode == 0, down.stderr
        # Ours to route to, not ours to stop.
        assert first.process.poll() is None and second.process.poll() is None
