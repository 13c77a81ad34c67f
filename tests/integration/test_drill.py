"""`fleet drill` on a simulated fleet, every fault, in seconds: the machinery,
the report and what it counts. No timing is asserted; that a killed or hung
replica leaves rotation and comes back is the behaviour under test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.bench.drill import DrillPlan, DutyCycle, check_plan
from tests.support.cli import fleet
from tests.support.fleet import running_fleet
from tests.support.harness import wait_for

pytestmark = pytest.mark.integration

SHORT = ("--load", "8", "--before", "2", "--after", "1", "--recover-timeout", "60")


@pytest.fixture(scope="module")
def sim_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # replica-1 takes 3 s to answer after each start, like a vLLM loading
    # its weights, so a kill keeps it away long enough to be seen.
    sim = {"defaults": {"decode_step_s": 0.005},
           "replicas": [{}, {"faults": {"startup_delay_s": 3}}, {}]}
    # Warm-up on, as on GPU fleets: every start and restart gets a small burst.
    warmup = {"enabled": True, "requests": 4, "max_tokens": 4}
    with running_fleet(tmp_path_factory.mktemp("drill"), 3, sim=sim,
                       gateway={"worker_processes": 1},
                       controller={"warmup": warmup}) as running:
        yield running.spec


def _drill(spec: Path, out: Path, *args: str) -> dict[str, Any]:
    done = fleet("drill", "--spec", str(spec), *args, *SHORT, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {"result.json", "README.md", "timeline.png"}
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


def test_a_killed_replica_is_warmed_before_it_rejoins(sim_fleet: Path, tmp_path: Path) -> None:
    _drill(sim_fleet, tmp_path, "kill", "replica-1")
    log = (sim_fleet.parent / "rt" / "logs" / "controller.log").read_text().splitlines()
    warmed = [i for i, line in enumerate(log) if "warm-up done replica=replica-1" in line]
    back = [i for i, line in enumerate(log) if "back: replica-1" in line]
    assert len(warmed) >= 2, "warmed at `fleet up` and again after the kill"
    assert "4 of 4 requests answered" in log[warmed[-1]]
    assert back and warmed[-1] < back[-1], "it rejoined before its warm-up was done"


@pytest.mark.parametrize("fault", ["kill", "restart"])
def test_a_stopped_replica_leaves_rotation_and_comes_back(sim_fleet: Path, tmp_path: Path,
                                                          fault: str) -> None:
    result = _drill(sim_fleet, tmp_path, fault, "replica-1")
    moments = result["moments_s"]
    assert moments["unhealthy"] is not None and moments["healthy"] is not None, moments
    assert moments["out_of_rotation"] is not None, moments
    assert moments["back_in_rotation"] is not None, moments
    assert moments["fault"] < moments["out_of_rotation"] < moments["back_in_rotation"]
    # What the gateway exists for: no request fails before its stream started.
    assert result["measures"]["failed_before_first_byte"] == 0, result["windows"]
    assert result["summary"]["requests"] > 10
    readme = (tmp_path / "README.md").read_text()
    assert f"fleet drill --spec {sim_fleet} {fault} replica-1" in readme
    assert "![timeline.png](timeline.png)" in readme
    if fault == "kill":
        assert [t["target"] for t in result["targets"]] == [
            "zero failed requests that had not started streaming", "out of rotation within 2 s",
            "back within 5 s of healthy"]


def test_a_hung_replica_leaves_rotation_until_it_answers(sim_fleet: Path, tmp_path: Path) -> None:
    result = _drill(sim_fleet, tmp_path, "hang", "replica-2", "--hold", "5")
    moments = result["moments_s"]
    assert moments["out_of_rotation"] is not None, moments
    assert moments["cleared"] is not None and moments["healthy"] >= moments["cleared"]
    assert moments["back_in_rotation"] is not None, moments


def test_a_slow_replica_stays_in_rotation(sim_fleet: Path, tmp_path: Path) -> None:
    result = _drill(sim_fleet, tmp_path, "slow", "replica-0", "--hold", "2",
                    "--output-tokens", "16-24")
    assert "16-24 output tokens" in (tmp_path / "README.md").read_text()
    assert result["moments_s"]["cleared"] is not None
    assert result["moments_s"]["out_of_rotation"] is None
    assert result["summary"]["failed"] == 0
    assert set(result["windows"]) == {"before the fault", "during the fault", "after"}
    assert result["windows"]["during the fault"]["requests"] > 0
    assert result["measures"]["weight_before"] is not None


def test_bad_drills_say_what_to_do(sim_fleet: Path, tmp_path: Path) -> None:
    for args, words in ((["kill", "replica-9"], "no replica named 'replica-9'"),
                        (["kill", "replica-0", "--load", "0"], "--load must be above 0"),
                        (["hang", "replica-0", "--hold", "-1"], "--hold must be")):
        done = fleet("drill", "--spec", str(sim_fleet), *args, "--out", str(tmp_path / "x"))
        assert done.returncode != 0 and words in done.stderr and "hint:" in done.stderr, args
    assert not (tmp_path / "x").exists()


def _state_of(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) STATE ..."; T is stopped by a signal.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_duty_cycle_slows_a_process_and_always_leaves_it_running() -> None:
    """The slow fault on a real replica: its processes stopped most of every
    period, then left running when the fault is cleared."""
    check_plan(DrillPlan("slow", "replica-0", 5), "cpu", ["replica-0"])
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        throttle = DutyCycle([child.pid], running_fraction=0.25, period_s=0.2)
        throttle.start()
        seen: set[str] = set()
        wait_for(lambda: seen.add(_state_of(child.pid)) or {"T", "R"} <= seen, timeout=30,
                 what="the process both stopped and running", interval=0.01)
        throttle.stop()
        assert _state_of(child.pid) != "T"
        with pytest.raises(ValueError, match="running_fraction"):
            DutyCycle([child.pid], running_fraction=1.0)
    finally:
        child.kill()
        child.wait(timeout=30)
