"""What a long-running cluster meets: a replica that crash-loops, nginx's master
killed, a full disk under the controller, and supervisord itself killed.

One simulated cluster of two replicas (real supervisord, nginx, Prometheus
and controller) serves the whole module, in this order; the last test takes
it down the way an operator would after losing supervisord.
"""

from __future__ import annotations

import os
import resource
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from router.disk.paths import RuntimePaths
from router.runtime.health import port_in_use
from router.runtime.procs import group_members, process_alive
from router.runtime.supervise import Supervisor
from tests.support.cli import fleet
from tests.support.fleet import running_fleet
from tests.support.harness import wait_for

pytestmark = pytest.mark.integration

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@dataclass
class Cluster:
    spec: Path
    paths: RuntimePaths
    url: str
    admin: str
    broken_flag: Path
    ports: list[int]

    def controller(self, path: str) -> Any:
        token = self.paths.admin_token.read_text().strip()
        response = requests.get(f"{self.admin}{path}", timeout=5,
                                headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        return response.json() if path != "/metrics" else response.text

    def replica(self, name: str) -> dict[str, Any]:
        return next(r for r in self.controller("/status")["replicas"] if r["name"] == name)

    def metric(self, line_start: str) -> float:
        for line in self.controller("/metrics").splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric line starts with {line_start}")

    def served_by(self, count: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            response = requests.post(f"{self.url}/v1/chat/completions", json=CHAT, timeout=10)
            assert response.status_code == 200, response.text
            seen[response.headers["X-Fleet-Replica"]] += 1
        return seen

    def reaches(self, replicas: set[str], limit: int = 200) -> set[str]:
        """The replicas answering until all of these have, or after limit requests.

        Not a fixed count: the pace probes may leave a replica at a small
        weight, and weighted round robin then reaches it only now and then.
        """
        seen: set[str] = set()
        for _ in range(limit):
            seen |= set(self.served_by(1))
            if replicas <= seen:
                break
        return seen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("uptime")
    flag = work / "replica-1-broken"
    with running_fleet(work, 2,
                       controller={"evaluate_interval_s": 1, "min_reload_interval_s": 2,
                                   "slow_start_s": 2},
                       sim={"replicas": [{}, {"faults": {"fail_start_while": str(flag)}}]}
                       ) as running:
        yield Cluster(running.spec, running.paths, running.url, running.admin_url, flag,
                      running.ports)


def test_a_crash_loop_ends_fatal_out_of_rotation_and_restart_brings_it_back(
        cluster: Cluster) -> None:
    supervisor = Supervisor(cluster.paths)
    cluster.broken_flag.touch()
    # A crash; every start after it fails, as with a model deleted under vLLM.
    os.killpg(int(cluster.paths.launch_state("replica-1").read_text()), signal.SIGKILL)
    wait_for(lambda: supervisor.process("replica-1").state == "FATAL", 90,
             "supervisord to give up on replica-1")

    status = fleet("status", "--spec", str(cluster.spec))
    assert "replica-1 is FATAL" in status.stdout, status.stdout
    assert "fail_start_while" in status.stdout  # its last log line
    assert "`fleet restart replica-1`" in status.stdout
    view = wait_for(lambda: (r := cluster.replica("replica-1"))["process"] == "FATAL" and r,
                    10, "the controller to see FATAL")
    assert view["in_rotation"] is False
    assert "crash-looping" in view["reason"] and "fleet restart replica-1" in view["reason"]
    assert cluster.metric('fleet_controller_replica_process_fatal{replica="replica-1"}') == 1
    assert cluster.metric(
        'fleet_controller_replica_process_starts_total{replica="replica-1"}') >= 2
    assert set(cluster.served_by(10)) == {"replica-0"}

    still_broken = fleet("restart", "--spec", str(cluster.spec), "replica-1")
    assert still_broken.returncode == 6
    assert "failed to start again" in still_broken.stderr
    assert "fail_start_while" in still_broken.stderr

    cluster.broken_flag.unlink()
    fixed = fleet("restart", "--spec", str(cluster.spec), "replica-1")
    assert fixed.returncode == 0, fixed.stderr
    assert "healthy again" in fixed.stderr
    wait_for(lambda: cluster.replica("replica-1")["in_rotation"], 30,
             "replica-1 back in rotation")
    assert cluster.metric('fleet_controller_replica_process_fatal{replica="replica-1"}') == 0
    assert supervisor.process("replica-0").uptime_s > supervisor.process("replica-1").uptime_s


def test_restart_of_an_unknown_program_names_the_known_ones(cluster: Cluster) -> None:
    unknown = fleet("restart", "--spec", str(cluster.spec), "replica-9")
    assert unknown.returncode == 6
    assert "no program named 'replica-9'" in unknown.stderr and "replica-0" in unknown.stderr


def _master(paths: RuntimePaths) -> int | None:
    try:
        pid = int(paths.nginx_pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if process_alive(pid) else None


def test_a_killed_nginx_master_is_replaced_and_its_orphaned_workers_retire(
        cluster: Cluster) -> None:
    old = _master(cluster.paths)
    assert old is not None
    old_workers = group_members(old)
    assert len(old_workers) >= 2  # the master and at least one worker
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (pid := _master(cluster.paths)) not in (None, old) and pid, 30,
                   "supervisord to start a new nginx master")
    wait_for(lambda: not any(process_alive(p) for p in old_workers), 30,
             "the old master's workers to quit")
    assert "orphaned worker" in cluster.paths.log("gateway").read_text()
    assert cluster.served_by(6)
    # The new master takes reloads: a drain reaches the gateway.
    drain = fleet("drain", "--spec", str(cluster.spec), "replica-0")
    assert drain.returncode == 0, drain.stderr
    wait_for(lambda: set(cluster.served_by(4)) == {"replica-1"}, 15, "the drain to apply")
    assert fleet("undrain", "--spec", str(cluster.spec), "replica-0").returncode == 0
    assert _master(cluster.paths) == new


def _file_size_limit(pid: int, soft: int) -> None:
    # The soft limit only: an unprivileged container may not raise a hard one back.
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))


def test_a_full_disk_keeps_the_old_config_serving_and_the_change_applies_later(
        cluster: Cluster) -> None:
    controller = Supervisor(cluster.paths).process("controller").pid
    upstream_before = cluster.paths.upstream_conf.read_text()
    failed_before = cluster.metric('fleet_controller_reloads_total{result="write_failed"}')
    # Python ignores SIGXFSZ: past the limit a write fails with EFBIG, as on a full disk.
    _file_size_limit(controller, 64)
    try:
        drain = fleet("drain", "--spec", str(cluster.spec), "replica-1")
        assert drain.returncode == 6
        assert "still runs its previous configuration" in drain.stderr
        assert "cannot write" in drain.stderr and "retries on its own" in drain.stderr
        assert cluster.paths.upstream_conf.read_text() == upstream_before
        assert cluster.metric(
            'fleet_controller_reloads_total{result="write_failed"}') > failed_before
        assert cluster.metric("fleet_controller_change_pending") == 1
        assert cluster.reaches({"replica-0", "replica-1"}) == {"replica-0", "replica-1"}
    finally:
        _file_size_limit(controller, resource.RLIM_INFINITY)
    wait_for(lambda: cluster.replica("replica-1")["in_rotation"] is False, 15,
             "the pending drain to apply once the disk has room")
    assert cluster.metric("fleet_controller_change_pending") == 0
    assert set(cluster.served_by(6)) == {"replica-0"}
    assert fleet("undrain", "--spec", str(cluster.spec), "replica-1").returncode == 0


def test_with_supervisord_killed_the_fleet_serves_and_status_and_down_say_what_happened(
        cluster: Cluster) -> None:
    supervisor = Supervisor(cluster.paths)
    pid = supervisor.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: supervisor.pid() is None, 10, "supervisord to be gone")
    assert cluster.reaches({"replica-0", "replica-1"}) == {"replica-0", "replica-1"}

    status = fleet("status", "--spec", str(cluster.spec))
    assert status.returncode == 1
    assert "supervisord is not running" in status.stdout
    for program in ("gateway", "replica-0", "replica-1", "prometheus", "controller"):
        assert program in status.stdout
    assert "/health: 200" in status.stdout and "`fleet down`" in status.stdout
    as_json = yaml.safe_load(fleet("status", "--spec", str(cluster.spec), "--json").stdout)
    orphans = as_json["unsupervised"]
    assert {"gateway", "replica-0", "replica-1"} <= {p["program"] for p in orphans}

    again = fleet("up", "--spec", str(cluster.spec))
    assert again.returncode == 6 and "without their supervisord" in again.stderr

    down = fleet("down", "--spec", str(cluster.spec))
    assert down.returncode == 0, down.stderr
    assert "supervisord is gone" in down.stderr
    wait_for(lambda: not any(process_alive(p["pid"]) for p in orphans), 20,
             "every orphan to exit")
    assert not any(port_in_use("127.0.0.1", port) for port in cluster.ports)
    assert "no cluster is running" in fleet("status", "--spec", str(cluster.spec)).stdout
