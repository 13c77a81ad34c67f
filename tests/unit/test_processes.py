"""Seeing crash loops and the processes a dead supervisord left, with real processes
where the kernel is the subject and a scripted supervisord where it is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from router.controller.metrics import ControllerMetrics
from router.controller.processes import ProcessWatch
from router.errors import ClusterError
from router.gateway_launch import orphaned_workers, retire
from router.runtime.procs import cmdline, left_by_supervisor, process_alive
from router.runtime.supervise import ProcessInfo
from tests.support.harness import wait_for


def _info(name: str, state: str, started_at: int) -> ProcessInfo:
    return ProcessInfo(name=name, state=state, pid=0 if state == "FATAL" else 10,
                       uptime_s=0, description="", started_at=started_at)


def test_the_watch_counts_starts_reports_fatal_and_holds_while_supervisord_is_away() -> None:
    readings: list[list[ProcessInfo] | Exception] = [
        [_info("replica-0", "RUNNING", 100), _info("replica-1", "RUNNING", 100)],
        [_info("replica-0", "RUNNING", 100), _info("replica-1", "BACKOFF", 130)],
        [_info("replica-0", "RUNNING", 100), _info("replica-1", "STARTING", 131)],
        ClusterError("cannot reach supervisord"),
        [_info("replica-0", "RUNNING", 100), _info("replica-1", "FATAL", 140),
         _info("gateway", "RUNNING", 1)],
    ]

    def read() -> list[ProcessInfo]:
        reading = readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading

    metrics = ControllerMetrics()
    watch = ProcessWatch(read, ["replica-0", "replica-1"], metrics, interval_s=0.5)
    changed = [watch.read_once() for _ in range(5)]
    assert changed == [True, True, True, False, True]
    assert watch.states == {"replica-0": "RUNNING", "replica-1": "FATAL"}
    assert metrics.process_starts.labels(replica="replica-1")._value.get() == 3
    assert metrics.process_starts.labels(replica="replica-0")._value.get() == 0
    assert metrics.gave_up.labels(replica="replica-1")._value.get() == 1
    looping = watch.crash_looping()
    assert list(looping) == ["replica-1"]
    assert "gave up" in looping["replica-1"] and "fleet restart replica-1" in looping["replica-1"]


def _child(cwd: Path, env: dict[str, str], title: str | None = None) -> subprocess.Popen[bytes]:
    argv = ["bash", "-c", f'exec -a "{title}" sleep 60'] if title else ["sleep", "60"]
    return subprocess.Popen(argv, cwd=cwd, env=env)


def test_left_by_supervisor_finds_its_programs_and_nginx_and_not_a_shell(tmp_path: Path) -> None:
    socket = str(tmp_path / "supervisor.sock")
    path = os.environ["PATH"]
    program = _child(tmp_path, {"PATH": path, "SUPERVISOR_SERVER_URL": f"unix://{socket}",
                                "SUPERVISOR_PROCESS_NAME": "replica-0"})
    other_cluster = _child(tmp_path, {"PATH": path,
                                      "SUPERVISOR_SERVER_URL": "unix:///elsewhere.sock"})
    nginx = _child(tmp_path, {"PATH": path}, title="nginx: worker process")
    shell = _child(tmp_path, {"PATH": path})
    try:
        wait_for(lambda: cmdline(nginx.pid).startswith("nginx: "), 10,
                 "bash to exec into its new title", interval=0.05)
        found = {(p.pid, p.program) for p in left_by_supervisor(str(tmp_path), socket)}
        assert found == {(program.pid, "replica-0"), (nginx.pid, "gateway")}
    finally:
        for child in (program, other_cluster, nginx, shell):
            child.kill()
            child.wait()


# A stand-in for nginx: a "master" in its own group with two "workers", its pid in a
# file. Like nginx's, the workers handle QUIT themselves: a shell that runs a
# background job may hand its children QUIT ignored.
# Each says it is ready (its handler installed) with a file named by its pid.
WORKER = ("import os, signal, sys, time; signal.signal(signal.SIGQUIT, lambda *_: sys.exit(0)); "
          "open(os.path.join(os.environ['WORKERS_READY'], str(os.getpid())), 'w').close(); "
          "time.sleep(60)")
MASTER = (
    "import os, subprocess, sys, time\n"
    f"worker = ['bash', '-c', 'exec -a \"nginx: worker process\" {sys.executable} -c \"$0\"', "
    f"{WORKER!r}]\n"
    "workers = [subprocess.Popen(worker) for _ in range(2)]\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "print(*[w.pid for w in workers], flush=True)\n"
    "time.sleep(60)\n"
)


def test_the_gateway_launcher_retires_the_workers_of_a_killed_master(tmp_path: Path) -> None:
    pid_file = tmp_path / "nginx.pid"
    ready = tmp_path / "ready"
    ready.mkdir()
    master = subprocess.Popen([sys.executable, "-c", MASTER, str(pid_file)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "WORKERS_READY": str(ready)})
    assert master.stdout is not None
    workers = [int(pid) for pid in master.stdout.readline().split()]
    try:
        # Let bash exec into the new title and Python install its handler.
        deadline = time.monotonic() + 10
        while not (all(cmdline(w).startswith("nginx: ") for w in workers)
                   and {int(f.name) for f in ready.iterdir()} == set(workers)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        master.kill()
        master.wait()
        assert orphaned_workers(pid_file) == (master.pid, sorted(workers))
        assert sorted(retire(pid_file)) == sorted(workers)
        deadline = time.monotonic() + 5
        while any(process_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_alive(w) for w in workers)
        assert orphaned_workers(pid_file) == (master.pid, [])
    finally:
        master.stdout.close()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
