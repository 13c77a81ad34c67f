"""Reading the Linux process table (/proc): liveness, trees and groups.

Used to prove that a stopped cluster left nothing behind and to find the
processes a killed replica orphaned. Standard library only: router.launch
imports it in every replica.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat this project needs."""

    pid: int
    state: str  # R, S, D, Z, ...
    ppid: int
    pgrp: int


def stat(pid: int) -> ProcStat | None:
    """One process's stat line, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return ProcStat(pid=pid, state=fields[0], ppid=int(fields[1]), pgrp=int(fields[2]))


def all_processes() -> Iterator[ProcStat]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := stat(int(entry))) is not None:
            yield found


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    found = stat(pid)
    return found is not None and found.state != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for proc in all_processes():
        if proc.state != "Z":
            children.setdefault(proc.ppid, []).append(proc.pid)
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def group_members(pgid: int) -> list[int]:
    """Every live process of a process group."""
    return [p.pid for p in all_processes() if p.pgrp == pgid and p.state != "Z"]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def working_dir(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with ({} when unreadable).

    nginx overwrites its own (its process titles take that memory), so
    nginx's processes read as {} or as noise.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, sep, value in pairs if sep}


@dataclass(frozen=True)
class Unsupervised:
    """A process of a cluster whose supervisord is gone."""

    pid: int
    program: str
    command: str


def left_by_supervisor(root: str, socket: str) -> list[Unsupervised]:
    """The processes a supervisord of runtime dir ``root`` started, once it is gone.

    supervisord starts every program in ``root`` and gives it
    SUPERVISOR_SERVER_URL naming its socket; vLLM's engine processes inherit
    both. nginx's processes hide their environment, so a process running in
    ``root`` whose title is nginx's counts as the gateway. A shell that an
    operator left in ``root`` has neither, and is never listed.
    """
    own = {os.getpid(), os.getppid()}
    url = f"unix://{socket}"
    found = []
    for proc in all_processes():
        if proc.state == "Z" or proc.pid in own or working_dir(proc.pid) != root:
            continue
        command = cmdline(proc.pid).strip()
        env = environ(proc.pid)
        if env.get("SUPERVISOR_SERVER_URL") == url:
            program = env.get("SUPERVISOR_PROCESS_NAME", "?")
        elif command.startswith("nginx: "):
            program = "gateway"
        else:
            continue
        found.append(Unsupervised(proc.pid, program, command))
    return sorted(found, key=lambda p: (p.program, p.pid))


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def open_fds(pid: int) -> int:
    """Open file descriptors of one process (0 when it is gone or unreadable)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
