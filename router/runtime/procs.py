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
