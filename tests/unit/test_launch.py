"""router.launch with real processes: nothing a replica forked may outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from router.launch import kill_recorded_group
from router.runtime.procs import process_alive

# A stand-in for vLLM: a parent that forks a long-lived child and prints both pids.
FORKER = (
    "import os, sys, time\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    time.sleep(600); sys.exit(0)\n"
    "print(os.getpid(), pid, flush=True)\n"
    "time.sleep(600)\n"
)


def _wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(process_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _start(state: Path) -> tuple[subprocess.Popen[str], int, int]:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "router.launch", "--state", str(state), "--",
         sys.executable, "-c", FORKER],
        stdout=subprocess.PIPE, text=True,
    )
    assert launcher.stdout is not None
    parent, child = (int(x) for x in launcher.stdout.readline().split())
    launcher.stdout.close()
    return launcher, parent, child


def test_killing_the_command_takes_its_children_down(tmp_path: Path) -> None:
    state = tmp_path / "r.pgid"
    launcher, parent, child = _start(state)
    try:
        assert int(state.read_text()) == parent
        os.kill(parent, signal.SIGKILL)
        assert launcher.wait(timeout=10) == 128 + signal.SIGKILL
        assert _wait_gone([child]), "the forked child outlived its killed parent"
        assert not state.exists()
    finally:
        for pid in (parent, child):
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_term_is_forwarded_to_the_whole_group(tmp_path: Path) -> None:
    launcher, parent, child = _start(tmp_path / "r.pgid")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=10) == 128 + signal.SIGTERM
    assert _wait_gone([parent, child])


STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


def test_a_command_that_ignores_term_is_killed_after_the_grace(tmp_path: Path) -> None:
    with subprocess.Popen(
            [sys.executable, "-m", "router.launch", "--state", str(tmp_path / "r.pgid"),
             "--stop-grace", "1", "--", sys.executable, "-c", STUBBORN],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as launcher:
        assert launcher.stdout is not None and launcher.stdout.readline() == "ready\n"
        pgid = int((tmp_path / "r.pgid").read_text())
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=15) == 128 + signal.SIGKILL
        assert launcher.stderr is not None and "did not exit 1s after" in launcher.stderr.read()
    assert _wait_gone([pgid])


def test_a_killed_launcher_is_cleaned_up_by_the_next_one(tmp_path: Path) -> None:
    state = tmp_path / "r.pgid"
    first, parent, child = _start(state)
    first.kill()  # SIGKILL: the launcher gets no chance to clean up
    first.wait(timeout=10)
    assert process_alive(parent) and process_alive(child)
    second, parent2, child2 = _start(state)
    try:
        assert _wait_gone([parent, child]), "leftovers of the first run survived"
        assert process_alive(parent2) and process_alive(child2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=10)
        assert _wait_gone([parent2, child2])


def test_stale_record_of_an_unrelated_group_is_left_alone(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        state = tmp_path / "r.pgid"
        state.write_text(f"{bystander.pid}\n")
        assert kill_recorded_group(state, "vllm.entrypoints --port 8100") == []
        assert bystander.poll() is None
        assert not state.exists()
    finally:
        bystander.kill()
        bystander.wait()


# A stand-in for a replica that loads for a while, then answers /health; it
# notes when it started and when it began to answer.
LOADER = (
    "import http.server, sys, time\n"
    "log, port = sys.argv[1], int(sys.argv[2])\n"
    "open(log, 'a').write(f'start {time.monotonic()}\\n')\n"
    "time.sleep(1.0)\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "server = http.server.HTTPServer(('127.0.0.1', port), H)\n"
    "open(log, 'a').write(f'ready {time.monotonic()}\\n')\n"
    "server.serve_forever()\n"
)


def test_replicas_of_one_gpu_start_one_after_the_other(tmp_path: Path) -> None:
    from router.runtime.ports import free_port

    lock = tmp_path / "start-GPU-x.lock"
    launchers = []
    try:
        for name in ("first", "second"):
            port = free_port()
            launchers.append(subprocess.Popen(
                [sys.executable, "-m", "router.launch", "--state", str(tmp_path / f"{name}.pgid"),
                 "--start-lock", str(lock), "--ready-url", f"http://127.0.0.1:{port}/",
                 "--", sys.executable, "-c", LOADER, str(tmp_path / f"{name}.log"), str(port)],
                stderr=subprocess.PIPE, text=True))
            if name == "first":  # the first takes the lock before the second asks
                deadline = time.monotonic() + 10
                while not (tmp_path / "first.log").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
        deadline = time.monotonic() + 20
        while not (tmp_path / "second.log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = dict(line.split() for line in (tmp_path / "first.log").read_text().splitlines())
        second = dict(line.split() for line in (tmp_path / "second.log").read_text().splitlines())
        assert float(second["start"]) >= float(first["ready"]), "both loaded at once"
    finally:
        errors = []
        for launcher in launchers:
            launcher.send_signal(signal.SIGTERM)
            errors.append(launcher.communicate(timeout=30)[1])
    assert "another replica of this GPU is starting" in errors[1]


def test_start_lock_needs_a_ready_url(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "router.launch", "--state", str(tmp_path / "s"),
                           "--start-lock", str(tmp_path / "l"), "--", "true"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--start-lock and --ready-url go together" in proc.stderr
