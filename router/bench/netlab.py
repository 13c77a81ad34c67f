"""Hosts on one machine: Linux network namespaces on one bridge.

A lab is a `lan` namespace holding a bridge, and one namespace per host with
an `eth0` veth on that bridge and its own loopback, so every host runs a
fleet on the default ports as a separate machine would. The addresses come
from 198.18.0.0/15, the range set aside for benchmark networks (RFC 2544),
in namespaces that reach nothing outside the lab. A host's link is pulled by
taking the bridge's end of its veth down: the host sees its carrier go, as
with a cable.

Everything a lab creates is named after its tag, and :meth:`NetLab.destroy`
removes it all (the processes inside first), also after a half-built
create; a lab left by a killed run is removed by the next one
(:func:`remove_stale`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from router.errors import EnvironmentError_

log = logging.getLogger(__name__)

PREFIX = "flab"
# Inside the lab only: 198.18.<net>.0/24, <net> from the tag.
LAB_NETWORK = "198.18"
INTERFACE = "eth0"


@dataclass(frozen=True)
class LabHost:
    name: str
    namespace: str
    address: str
    # The bridge's end of the host's veth, in the lan namespace.
    port: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise EnvironmentError_(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}",
                                hint="network namespaces need root (or CAP_NET_ADMIN) and "
                                     "iproute2")
    return proc


def available() -> str | None:
    """None when this process may make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _kill_inside(namespace: str) -> None:
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = _ip("netns", "pids", namespace, check=False).stdout.split()
        if not pids:
            return


def remove_stale() -> list[str]:
    """Remove the labs of runs that are gone (their tag names their pid)."""
    removed = []
    for namespace in namespaces():
        parts = namespace.split("-")
        if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_inside(namespace)
        _ip("netns", "del", namespace, check=False)
        removed.append(namespace)
    return removed


class NetLab:
    """A bridge and a namespace per host; :meth:`destroy` removes them all."""

    def __init__(self, hosts: Sequence[str], tag: str | None = None) -> None:
        self.tag = tag or str(os.getpid())
        net = int(self.tag) % 250 + 1 if self.tag.isdigit() else 1
        self.subnet = f"{LAB_NETWORK}.{net}"
        self.lan = f"{PREFIX}-{self.tag}-lan"
        self.hosts = {name: LabHost(name=name, namespace=f"{PREFIX}-{self.tag}-{name}",
                                    address=f"{self.subnet}.{11 + i}",
                                    port=f"fl{self.tag[-6:]}p{i}")
                      for i, name in enumerate(hosts)}

    def address(self, last_octet: int) -> str:
        """Another address of the lab's network (a virtual IP)."""
        return f"{self.subnet}.{last_octet}"

    def create(self) -> NetLab:
        remove_stale()
        try:
            _ip("netns", "add", self.lan)
            _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.lan, "link", "set", "br0", "up")
            for host in self.hosts.values():
                _ip("netns", "add", host.namespace)
                _ip("-n", host.namespace, "link", "set", "lo", "up")
                _ip("-n", self.lan, "link", "add", host.port, "type", "veth",
                    "peer", "name", INTERFACE, "netns", host.namespace)
                _ip("-n", self.lan, "link", "set", host.port, "master", "br0", "up")
                _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", INTERFACE)
                _ip("-n", host.namespace, "link", "set", INTERFACE, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Stop every process inside, then remove the namespaces (their veths go with them)."""
        mine = [h.namespace for h in self.hosts.values()] + [self.lan]
        existing = set(namespaces())
        for namespace in mine:
            if namespace in existing:
                _kill_inside(namespace)
                _ip("netns", "del", namespace, check=False)

    def __enter__(self) -> NetLab:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def run_in(self, host: str) -> list[str]:
        """The argv prefix that runs a command on ``host``."""
        return ["ip", "netns", "exec", self.hosts[host].namespace]

    def set_link(self, host: str, up: bool) -> None:
        """Plug or pull ``host``'s cable (its carrier goes with it)."""
        _ip("-n", self.lan, "link", "set", self.hosts[host].port, "up" if up else "down")

    def holds(self, host: str, address: str) -> bool:
        """Whether ``address`` is on ``host``'s eth0 right now."""
        shown = _ip("-n", self.hosts[host].namespace, "-o", "addr", "show", "dev", INTERFACE,
                    check=False).stdout
        return f" {address}/" in shown
