"""`fleet apply` on a running simulated fleet: a roll under load, a gateway-only
change under an open stream, one more replica, a second apply, a roll that
fails and is put back. No timing is asserted.

One cluster of three replicas (real supervisord, nginx, Prometheus and the
controller, warm-ups on as on a GPU fleet) serves the module; each test
applies a spec made from the one the previous test left running.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from router.disk.paths import RuntimePaths
from router.runtime.applying import apply_lock
from router.runtime.ports import free_port_block
from router.runtime.supervise import Supervisor
from tests.support.cli import fleet
from tests.support.fleet import merged, running_fleet, write_spec

pytestmark = pytest.mark.integration

REPLICAS = 3


@dataclass
class Applied:
    """The running cluster and the spec it last took."""

    folder: Path
    spec: Path
    data: dict[str, Any]
    url: str
    count: int = 0

    @property
    def paths(self) -> RuntimePaths:
        return RuntimePaths(Path(self.data["runtime_dir"]))

    def spec_with(self, **changes: Any) -> tuple[Path, dict[str, Any]]:
        self.count += 1
        data = merged(copy.deepcopy(self.data), changes)
        return write_spec(self.folder / f"next{self.count}", data), data

    def apply(self, *args: str, **changes: Any) -> Any:
        spec, data = self.spec_with(**changes)
        done = fleet("apply", "--spec", str(spec), *args, timeout=600)
        if done.returncode == 0 and "--dry-run" not in args:
            self.data = data
        return done

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in Supervisor(self.paths).processes()}

    def status(self) -> dict[str, Any]:
        done = fleet("status", "--json", "--spec", str(self.spec), timeout=60)
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    folder = tmp_path_factory.mktemp("apply")
    warmup = {"enabled": True, "requests": 2, "max_tokens": 2}
    # A port block for one replica more than it starts with; a short slow
    # start, which a roll waits out between replicas.
    with running_fleet(folder, REPLICAS, sim={"defaults": {"max_num_seqs": 8}},
                       ports={"replica_base": free_port_block(REPLICAS + 1)},
                       controller={"warmup": warmup, "slow_start_s": 3}) as running:
        yield Applied(folder, running.spec, running.data, running.url)


def test_fleet_up_on_a_running_cluster_points_to_apply(cluster: Applied) -> None:
    done = fleet("up", "--spec", str(cluster.spec), timeout=60)
    assert done.returncode != 0
    assert "already running" in done.stderr and "fleet apply --spec FILE" in done.stderr


def test_a_dry_run_prints_the_plan_and_touches_nothing(cluster: Applied) -> None:
    before = cluster.pids()
    done = cluster.apply("--dry-run", sim={"defaults": {"seed": 7}})
    assert done.returncode == 0, done.stderr
    assert "sim.defaults.seed: 0 -> 7" in done.stdout
    assert "roll replica-0" in done.stdout and "at least 2 of 3" in done.stdout
    refused = cluster.apply("--dry-run", gateway={"status_port": 1})
    assert refused.returncode == 2
    assert "gateway.status_port" in refused.stdout and "fleet down" in refused.stdout
    real = cluster.apply(gateway={"status_port": 1})
    assert real.returncode != 0 and "gateway.status_port" in real.stderr
    assert cluster.pids() == before


def test_a_rolling_change_under_load_fails_nothing(cluster: Applied, tmp_path: Path) -> None:
    before = cluster.pids()
    # Fewer batch slots: every replica rolls, and the controller restarts to read them.
    spec, data = cluster.spec_with(sim={"defaults": {"max_num_seqs": 6}})
    done = fleet("drill", "rollout", "--spec", str(cluster.spec), "--to", str(spec),
                 "--load", "6", "--before", "2", "--after", "1", "--out", str(tmp_path),
                 timeout=600)
    assert done.returncode == 0, done.stderr
    cluster.data = data
    result = json.loads((tmp_path / "result.json").read_text())
    assert [t["met"] for t in result["targets"]] == [True] * 4, result["targets"]
    assert [r["replica"] for r in result["rolls"]] == ["replica-0", "replica-1", "replica-2"]
    after = cluster.pids()
    assert all(after[f"replica-{i}"] != before[f"replica-{i}"] for i in range(REPLICAS))
    assert after["gateway"] == before["gateway"]
    status = cluster.status()
    generations = {r["generation"] for r in status["replicas"]}
    assert len(generations) == 1 and generations != {None}
    assert status["controller"]["replicas"] and all(
        r["in_rotation"] for r in status["controller"]["replicas"])
    public = requests.get(cluster.url + "/fleet/status", timeout=10).json()
    assert {r["generation"] for r in public["replicas"]} == generations
    assert public["rollout"] is None
    # The restarted controller took the replicas that were serving as warm.
    log = (cluster.paths.log("controller")).read_text()
    assert "decision=skip reason=in rotation before this controller started" in log


def test_a_gateway_only_change_keeps_an_open_stream(cluster: Applied) -> None:
    before = cluster.pids()
    lines: list[str] = []

    def stream() -> None:
        body = {"model": "sim-model", "stream": True, "max_tokens": 400,
                "messages": [{"role": "user", "content": "hi"}]}
        with requests.post(cluster.url + "/v1/chat/completions", json=body, stream=True,
                           timeout=120) as response:
            lines.extend(line.decode() for line in response.iter_lines() if line)

    reader = threading.Thread(target=stream)
    reader.start()
    done = cluster.apply(limits={"concurrent": 64})
    reader.join(timeout=120)
    assert done.returncode == 0, done.stderr
    assert "reloading the gateway" in done.stderr and "rolling" not in done.stderr
    assert lines and lines[-1] == "data: [DONE]", lines[-3:]
    assert cluster.pids() == before


def test_a_second_apply_is_refused_while_one_runs(cluster: Applied) -> None:
    with apply_lock(cluster.paths):
        done = cluster.apply(limits={"concurrent": 32})
    assert done.returncode != 0
    assert "another `fleet apply` is changing this cluster" in done.stderr


def test_one_more_replica_starts_alone(cluster: Applied) -> None:
    before = cluster.pids()
    done = cluster.apply(replicas=REPLICAS + 1)
    assert done.returncode == 0, done.stderr
    after = cluster.pids()
    assert all(after[f"replica-{i}"] == before[f"replica-{i}"] for i in range(REPLICAS))
    assert "replica-3" in after
    view = cluster.status()["controller"]["replicas"]
    assert [r["name"] for r in view if r["in_rotation"]] == [
        f"replica-{i}" for i in range(REPLICAS + 1)]


def test_a_replica_that_fails_on_new_settings_puts_the_roll_back(cluster: Applied,
                                                                  tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    generations = {r["name"]: r["generation"] for r in cluster.status()["replicas"]}
    running_spec = cluster.paths.spec_json.read_text()
    # replica-2 cannot start on the new spec; replica-0 and -1 roll before it.
    failing = [{}, {}, {"faults": {"fail_start_while": str(flag)}}]
    done = cluster.apply(sim={"defaults": {"seed": 8}, "replicas": failing})
    assert done.returncode != 0
    assert "replica-2 failed on the new settings" in done.stderr
    assert "Last lines of its log" in done.stderr
    assert "putting it and 2 rolled replica(s) back on the old settings" in done.stderr
    assert cluster.paths.spec_json.read_text() == running_spec
    status = cluster.status()
    assert {r["name"]: r["generation"] for r in status["replicas"]} == generations
    assert all(r["in_rotation"] for r in status["controller"]["replicas"])
    assert all(r["state"] in ("RUNNING", "STARTING") for r in status["replicas"])


def test_fewer_replicas_stop_the_last_one_alone(cluster: Applied) -> None:
    before = cluster.pids()
    done = cluster.apply(replicas=REPLICAS)
    assert done.returncode == 0, done.stderr
    assert "removing replica-3" in done.stderr
    after = cluster.pids()
    assert "replica-3" not in after
    assert all(after[f"replica-{i}"] == before[f"replica-{i}"] for i in range(REPLICAS))
    view = cluster.status()["controller"]["replicas"]
    assert [r["name"] for r in view if r["in_rotation"]] == [
        f"replica-{i}" for i in range(REPLICAS)]
