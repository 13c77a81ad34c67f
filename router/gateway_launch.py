"""Start nginx, first retiring the workers a killed nginx master left behind.

When nginx's master dies by SIGKILL (an OOM kill, an operator's mistake)
its workers live on: they keep the listening sockets and serve the old
configuration, but nothing can reload them any more. supervisord then starts
a new master, which cannot bind the ports the orphans hold and exits; the
gateway keeps serving stale weights and keys while supervisord restarts it
for ever.

This launcher runs first. The pid file still names the dead master, whose
pid is also its workers' process group (supervisord starts every program as
a group leader). If that master is gone and members of its group are
still nginx's, they get SIGQUIT, nginx's graceful stop: each closes its
listening sockets at once and finishes the requests it holds (bounded by
worker_shutdown_timeout). Then the launcher becomes nginx, whose own bind
retries cover the moment the old sockets take to close.

Usage: python -m router.gateway_launch --pid-file FILE -- nginx ARGS...
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from router.runtime.procs import cmdline, group_members, process_alive

NGINX_TITLE = "nginx: "


def orphaned_workers(pid_file: Path) -> tuple[int | None, list[int]]:
    """The dead master's pid and the nginx processes still in its group."""
    try:
        master = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None, []
    if process_alive(master) and cmdline(master).startswith(NGINX_TITLE):
        return master, []  # a live master: nothing was orphaned
    return master, [pid for pid in group_members(master)
                    if cmdline(pid).startswith(NGINX_TITLE)]


def retire(pid_file: Path) -> list[int]:
    """SIGQUIT the orphaned workers; returns their pids."""
    master, workers = orphaned_workers(pid_file)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            pass
    if workers:
        print(f"gateway_launch: nginx master {master} is gone; asked its {len(workers)} "
              f"orphaned worker(s) {workers} to finish their requests and quit",
              file=sys.stderr, flush=True)
    return workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.gateway_launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid-file", type=Path, required=True,
                        help="nginx's pid file (the `pid` directive of nginx.conf)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the nginx command to run after --")
    retire(args.pid_file)
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
