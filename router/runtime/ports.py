"""Free loopback ports for fleets started on the fly (benchmarks, drills, tests)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from router.errors import ClusterError

# The kernel may hand the same port 0 out again as soon as it is closed, so
# two free_port() calls for one spec could return one port twice.
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port this process has not handed out before."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ClusterError("no free loopback port left that this process has not used already",
                       hint="free some loopback ports, or run fewer fleets at once")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(count: int) -> int:
    """A base port such that base .. base+count-1 are all free.

    Blocks come from below the kernel's ephemeral range, where free_port()
    (port 0) never lands, so a block and the single ports picked after it
    cannot collide.
    """
    rng = random.Random()
    top = _ephemeral_low() - count
    for _ in range(200):
        base = rng.randrange(10000, top)
        block = range(base, base + count)
        if not _handed_out.intersection(block) and all(_bindable(p) for p in block):
            _handed_out.update(block)
            return base
    raise ClusterError(f"no block of {count} free loopback ports found below {top + count}",
                       hint="free some loopback ports, or run fewer fleets at once")
