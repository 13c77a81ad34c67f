"""Run one replica so that none of its processes outlive it.

vLLM's API server forks an engine-core process, which forks a worker. When
the API server is killed with SIGKILL those children are re-parented to init
and keep their memory (about 3 GB per CPU replica) and their pinned core.
supervisord's killasgroup only acts when *it* stops a program, not when the
program dies, so supervision alone leaks them.

This launcher sits between supervisord and vLLM:
- it starts vLLM in a process group of its own and records the group id;
- it forwards TERM/INT/QUIT to that whole group, and kills the group if it
  has not exited ``--stop-grace`` seconds later: on SIGTERM vLLM stops its
  engine at once, then its HTTP server waits for open connections to close,
  and a gateway's streaming or keep-alive connection keeps it waiting for
  ever, dead but never restarted (found by `fleet drill restart`);
- when vLLM exits for any reason, it kills what is left of the group and
  exits with vLLM's status (so supervisord restarts it);
- when it starts, it kills the group a previous launcher recorded, which
  covers the launcher itself having been SIGKILLed;
- with ``--start-lock``, it starts the command only while it holds that
  file's lock, and keeps it until ``--ready-url`` answers 200 (or the
  command exits): replicas that share a GPU start one at a time, because
  vLLM sizes its KV cache from the memory it sees free while it profiles,
  and a neighbour loading at the same moment makes that reading wrong.

Usage: python -m router.launch --state FILE [--start-lock FILE --ready-url URL] -- COMMAND...
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO

from router.runtime.health import probe
from router.runtime.procs import cmdline, group_members

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Below supervisord's stopwaitsecs for replicas (30 s), so a stop it asks for
# still ends with this launcher's own clean-up.
STOP_GRACE_S = 20.0


def kill_recorded_group(state: Path, marker: str) -> list[int]:
    """Kill the group recorded in ``state`` if its processes still run ``marker``.

    The marker check guards against a recycled group id: only processes whose
    command line shows they belong to this replica are touched.
    """
    try:
        pgid = int(state.read_text().strip())
    except (FileNotFoundError, ValueError):
        return []
    members = [pid for pid in group_members(pgid)
               if marker in cmdline(pid) or "VLLM::" in cmdline(pid)]
    if members:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    state.unlink(missing_ok=True)
    return members


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def acquire(lock_file: Path) -> IO[bytes]:
    """Block until this process holds the lock; the lock lives as long as the handle."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_file.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"launch: waiting for {lock_file.name}: another replica of this GPU is "
              "starting", file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def run(state: Path, command: list[str], stop_grace_s: float = STOP_GRACE_S,
        start_lock: Path | None = None, ready_url: str | None = None) -> int:
    marker = " ".join(command)
    # Taken before anything starts; a signal while waiting ends the launcher
    # with nothing to clean up.
    lock = acquire(start_lock) if start_lock is not None else None
    leftovers = kill_recorded_group(state, marker)
    if leftovers:
        print(f"launch: killed {len(leftovers)} process(es) left by the previous run: "
              f"{leftovers}", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let the kernel release their ports and memory
    child = subprocess.Popen(command, start_new_session=True)
    pgid = child.pid
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(f"{pgid}\n")

    kill_at: list[float] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not kill_at:
            kill_at.append(time.monotonic() + stop_grace_s)
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    next_ready_check = 0.0
    while True:
        try:
            code = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if lock is not None and ready_url and time.monotonic() >= next_ready_check:
                next_ready_check = time.monotonic() + 1.0
                if probe(ready_url, timeout_s=2.0).ok:
                    lock.close()  # the next replica of this GPU may start
                    lock = None
            if kill_at and time.monotonic() > kill_at[0]:
                print(f"launch: the command did not exit {stop_grace_s:g}s after it was asked "
                      "to stop; killing its process group", file=sys.stderr, flush=True)
                _kill_group(pgid)
                kill_at[0] = float("inf")
    if lock is not None:
        lock.close()
    # vLLM is gone; anything it forked that is still alive is an orphan.
    _kill_group(pgid)
    state.unlink(missing_ok=True)
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, required=True,
                        help="file that records the process group of the running command")
    parser.add_argument("--stop-grace", type=float, default=STOP_GRACE_S, metavar="S",
                        help="after a forwarded TERM/INT/QUIT, kill the group if it has not "
                             f"exited within S seconds (default {STOP_GRACE_S:g})")
    parser.add_argument("--start-lock", type=Path, metavar="FILE",
                        help="start only while holding this file's lock; keep it until "
                             "--ready-url answers 200 or the command exits")
    parser.add_argument("--ready-url", metavar="URL", help="with --start-lock: readiness URL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if (args.start_lock is None) != (args.ready_url is None):
        parser.error("--start-lock and --ready-url go together")
    return run(args.state, command, args.stop_grace, args.start_lock, args.ready_url)


if __name__ == "__main__":
    sys.exit(main())
