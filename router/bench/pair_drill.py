"""`fleet drill gateway-failover` and `fleet drill replica-host-loss`: the
multi-host topology on one machine, faulted under load.

A :class:`PairLab` builds hosts as network namespaces (router.bench.netlab):
two gateway hosts of role ``gateway`` sharing a virtual IP through
keepalived, replica hosts of role ``replicas`` running simulated replicas,
and a client host. Each is a real fleet started with `fleet up` on its own
spec, inside its namespace, as an operator would on separate machines. The
client streams through the virtual IP (router.bench.vip_load) while the
drill pulls the active gateway (its nginx killed, or its link) or a replica
host's link, and puts it back.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from router.bench.netlab import NetLab
from router.bench.stats import percentile
from router.config.spec import SIM_SERVED_MODEL_NAME, GatewaySpec, PortsSpec
from router.disk.paths import RuntimePaths
from router.errors import ClusterError
from router.runtime.pair import KEYS_DIFFER
from router.runtime.procs import descendants
from router.runtime.supervise import Supervisor
from router.upstream import serving_addresses

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

GATEWAYS = ("gw-a", "gw-b")
CLIENT = "client"
VIP_OCTET = 10
# gw-a wins the first election.
PRIORITIES = {"gw-a": 250, "gw-b": 240}
GATEWAY_KILLS = ("nginx", "link")
POLL_S = 0.05
# Every host of the lab keeps the default ports, as separate machines would.
GATEWAY_PORT = GatewaySpec().port
UP_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class LabShape:
    replica_hosts: int = 2
    replicas_per_host: int = 2
    # Simulated replicas at a quarter of their default speed: 48 tokens
    # stream for about two seconds, so a fault finds streams in flight.
    sim_speed: float = 0.25


class PairLab:
    """A gateway pair, its replica hosts and a client, each a namespace."""

    def __init__(self, workdir: Path, shape: LabShape = LabShape(),
                 python: str = sys.executable, tag: str | None = None) -> None:
        self.workdir = workdir
        self.shape = shape
        self.python = python
        self.replica_hosts = tuple(f"rep-{i + 1}" for i in range(shape.replica_hosts))
        self.net = NetLab(GATEWAYS + self.replica_hosts + (CLIENT,), tag=tag)
        self.vip = self.net.address(VIP_OCTET)
        self.started: list[str] = []
        self.key = ""

    def address(self, host: str) -> str:
        return self.net.hosts[host].address

    @property
    def url(self) -> str:
        return f"http://{self.vip}:{GATEWAY_PORT}"

    def spec(self, host: str) -> dict[str, Any]:
        runtime = str(self.workdir / host)
        if host in self.replica_hosts:
            return {"engine": "sim", "replicas": self.shape.replicas_per_host,
                    "runtime_dir": runtime, "startup_timeout_s": 120,
                    "topology": {"role": "replicas", "listen": self.address(host)},
                    "sim": {"defaults": {"speed": self.shape.sim_speed}}}
        peer = next(g for g in GATEWAYS if g != host)
        return {
            "runtime_dir": runtime, "startup_timeout_s": 120,
            "gateway": {"host": "0.0.0.0"},
            "topology": {"role": "gateway",
                         "replica_hosts": [self.address(h) for h in self.replica_hosts]},
            "ha": {"enabled": True, "virtual_ip": f"{self.vip}/24", "interface": "eth0",
                   "priority": PRIORITIES[host], "unicast_src": self.address(host),
                   "peers": [self.address(peer)],
                   "pair_token_file": str(self.pair_token)},
            # What a lab of six hosts on two cores can carry: the pair's
            # failover needs nginx, the controller's probes and keepalived.
            "auth": {"enabled": True},
            "prometheus": {"enabled": False}, "gateway_metrics": {"enabled": False},
            "console": {"enabled": False},
            "controller": {"pace": {"enabled": False}},
        }

    @property
    def pair_token(self) -> Path:
        return self.workdir / "pair-token"

    def spec_path(self, host: str) -> Path:
        return self.workdir / f"{host}.yaml"

    def _fleet_argv(self, host: str, *args: str) -> list[str]:
        return self.net.run_in(host) + [self.python, "-m", "router.cli", *args,
                                         "--spec", str(self.spec_path(host))]

    def fleet(self, host: str, *args: str, timeout_s: float = UP_TIMEOUT_S) -> str:
        proc = subprocess.run(self._fleet_argv(host, *args), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"`fleet {' '.join(args)}` on {host} failed:\n"
                               + (proc.stderr or proc.stdout).strip()[-2000:])
        return proc.stdout + proc.stderr

    def status(self, host: str) -> dict[str, Any]:
        """`fleet status --json` on ``host`` (it answers even where its exit status is 1)."""
        proc = subprocess.run(self._fleet_argv(host, "status", "--json"), capture_output=True,
                              text=True, timeout=60, check=False)
        status: dict[str, Any] = json.loads(proc.stdout)
        return status

    def start(self, progress: Progress) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pair_token.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        self.pair_token.chmod(0o600)
        self.net.create()
        progress(f"lab {self.net.tag}: hosts " + ", ".join(
            f"{h.name} {h.address}" for h in self.net.hosts.values()) + f", virtual IP {self.vip}")
        for host in self.replica_hosts + GATEWAYS:
            self.spec_path(host).write_text(yaml.safe_dump(self.spec(host)), encoding="utf-8")
        # Replica hosts first: a gateway finds their replicas at its `fleet up`.
        for host in self.replica_hosts + GATEWAYS:
            self.started.append(host)
            self.fleet(host, "up")
            progress(f"{host}: fleet up done")
        self.key = self.add_key("drill")
        deadline = time.monotonic() + 30
        while self.holder() is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"no gateway took the virtual IP {self.vip} within 30 s",
                                   hint=f"see {self.workdir}/gw-a/logs/keepalived.log")
            time.sleep(0.2)
        progress(f"{self.holder()} holds {self.vip}")

    def add_key(self, name: str, on: str = "gw-a") -> str:
        """`fleet keys add NAME` on one gateway (the pair sends it to the other)."""
        output = self.fleet(on, "keys", "add", name)
        return next(line for line in output.splitlines() if line.startswith("sk-fleet-"))

    def status_code(self, url: str, key: str) -> int:
        """One authenticated GET of /v1/models at ``url``, from the client host."""
        proc = subprocess.run(
            self.net.run_in(CLIENT) + ["curl", "--silent", "--output", "/dev/null",
                                       "--max-time", "5", "--write-out", "%{http_code}",
                                       "--header", f"Authorization: Bearer {key}",
                                       url + "/v1/models"],
            capture_output=True, text=True, timeout=30, check=False)
        return int(proc.stdout or 0)

    def gateway_url(self, gateway: str) -> str:
        return f"http://{self.address(gateway)}:{GATEWAY_PORT}"

    def stop(self) -> None:
        """`fleet down` on every host started, then the namespaces; never raises."""
        for host in reversed(self.started):
            try:
                self.fleet(host, "down", timeout_s=120)
            except (ClusterError, subprocess.TimeoutExpired) as exc:
                log.warning("lab host %s did not stop cleanly: %s", host, exc)
        self.started.clear()
        self.net.destroy()

    def holder(self) -> str | None:
        held = [g for g in GATEWAYS if self.net.holds(g, self.vip)]
        return held[0] if len(held) == 1 else ("+".join(held) or None)

    def supervisor(self, host: str) -> Supervisor:
        return Supervisor(RuntimePaths(self.workdir / host))

    def serving(self, gateway: str) -> frozenset[str]:
        """The replica addresses the gateway's upstream routes to now."""
        try:
            text = RuntimePaths(self.workdir / gateway).upstream_conf.read_text()
        except FileNotFoundError:
            return frozenset()
        return serving_addresses(text)

    def host_replicas(self, host: str) -> frozenset[str]:
        base = PortsSpec().replica_base
        return frozenset(f"{self.address(host)}:{base + i}"
                         for i in range(self.shape.replicas_per_host))

    def kill_gateway(self, host: str) -> None:
        """nginx on ``host`` dies, as in a crash, and stays down: every nginx
        process of it is killed first (the kernel closes its connections), then
        supervisord is told to stop the program instead of starting it again."""
        supervisor = self.supervisor(host)
        info = supervisor.process("gateway")
        for pid in [info.pid, *descendants(info.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # supervisord sees the exit and starts nginx again on its own: wait
        # for that start and stop it, so the gateway stays down for the hold.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = supervisor.process("gateway").state
            if state in ("STOPPED", "FATAL"):
                return
            if state in ("STARTING", "RUNNING", "BACKOFF"):
                try:
                    supervisor.stop_process("gateway")
                    return
                except xmlrpc.client.Fault as exc:
                    if "NOT_RUNNING" not in exc.faultString:
                        raise
            time.sleep(0.02)
        raise ClusterError(f"the gateway on {host} did not stop after its kill")

    def start_gateway(self, host: str) -> None:
        self.supervisor(host).start_process("gateway")

    def load(self, rate: float, seconds: float, out: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.net.run_in(CLIENT) + [self.python, "-m", "router.bench.vip_load", "--url",
                                       self.url, "--key", self.key,
                                       "--model", SIM_SERVED_MODEL_NAME, "--rate",
                                       str(rate), "--seconds", str(seconds), "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextmanager
def running_lab(workdir: Path | None, shape: LabShape, progress: Progress) -> Iterator[PairLab]:
    with tempfile.TemporaryDirectory(prefix="fleet-lab-") as scratch:
        lab = PairLab(workdir or Path(scratch), shape)
        try:
            lab.start(progress)
            yield lab
        finally:
            lab.stop()
            progress("lab removed")


@dataclass
class Timeline:
    """What a watcher thread saw, every POLL_S: (time, value) on each change."""

    changes: list[tuple[float, Any]] = field(default_factory=list)

    def record(self, at: float, value: Any) -> None:
        if not self.changes or self.changes[-1][1] != value:
            self.changes.append((at, value))

    def first_after(self, at: float, test: Callable[[Any], bool]) -> float | None:
        for when, value in self.changes:
            if when >= at and test(value):
                return when
        return None


@contextmanager
def watching(read: Callable[[], Any]) -> Iterator[Timeline]:
    timeline = Timeline()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            timeline.record(time.time(), read())
            stop.wait(POLL_S)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield timeline
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass(frozen=True)
class DrillTimes:
    before_s: float = 8.0
    hold_s: float = 8.0
    after_s: float = 12.0

    @property
    def total_s(self) -> float:
        return self.before_s + self.hold_s + self.after_s


def read_outcomes(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def client_figures(outcomes: list[dict[str, Any]], fault_at: float,
                   moved_at: float | None = None) -> dict[str, Any]:
    """What the clients saw: failures before the first byte, streams cut, and
    how long after the fault a new connection first streamed again, once the
    address had moved (``moved_at``), where it moves: a gateway that crashed
    may answer for a moment as its supervisor starts it again."""
    since = max(fault_at, moved_at or fault_at)
    after = [o for o in outcomes if o["connected_at"] and o["connected_at"] >= since]
    answered = min((o["connected_at"] for o in after), default=None)
    return {
        "requests": len(outcomes),
        "ok": sum(o["result"] == "ok" for o in outcomes),
        "failed_before_first_byte": sum(o["result"] == "failed" for o in outcomes),
        "streams_cut": sum(o["result"] == "cut" for o in outcomes),
        "retried": sum(o["attempts"] > 1 for o in outcomes),
        "retried_after": dict(Counter(reason for o in outcomes
                                      for reason in o.get("retried_after", []))),
        "answered_again_s": None if answered is None else round(answered - fault_at, 2),
        "errors": sorted({o["error"] for o in outcomes if o["result"] != "ok" and o["error"]}),
    }


def _run_load(lab: PairLab, rate: float, times: DrillTimes, out: Path,
              fault: Callable[[], None], restore: Callable[[], None],
              progress: Progress) -> tuple[float, float]:
    proc = lab.load(rate, times.total_s, out)
    try:
        time.sleep(times.before_s)
        fault_at = time.time()
        fault()
        time.sleep(times.hold_s)
        restored_at = time.time()
        restore()
        _, err = proc.communicate(timeout=times.after_s + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise ClusterError("the load client failed: " + err.decode(errors="replace")[-800:])
    progress(f"load done: {len(read_outcomes(out))} requests")
    return fault_at, restored_at


def _keepalived_state(lab: PairLab, host: str) -> str | None:
    """The last state keepalived on ``host`` announced in its log."""
    try:
        text = RuntimePaths(lab.workdir / host).log("keepalived").read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(text.splitlines()):
        if "Entering " in line and " STATE" in line:
            return line.split("Entering ", 1)[1].split(" STATE", 1)[0]
    return None


def gateway_failover(lab: PairLab, kill: str, rate: float, times: DrillTimes, out: Path,
                     progress: Progress) -> dict[str, Any]:
    """Kill the gateway that holds the address; put it back; what clients saw."""
    active = lab.holder()
    if active not in GATEWAYS:
        raise ClusterError(f"the virtual IP is held by {active!r}, not one gateway")
    other = next(g for g in GATEWAYS if g != active)
    fault: Callable[[], None]
    if kill == "nginx":
        fault, restore = (lambda: lab.kill_gateway(active)), (lambda: lab.start_gateway(active))
    else:
        fault = lambda: lab.net.set_link(active, False)  # noqa: E731
        restore = lambda: lab.net.set_link(active, True)  # noqa: E731
    progress(f"{rate:g} streams/s through {lab.vip}; killing {active}'s {kill} after "
             f"{times.before_s:g}s")
    with watching(lab.holder) as holders, \
            watching(lambda: _keepalived_state(lab, active)) as states:
        fault_at, restored_at = _run_load(lab, rate, times, out, fault, restore, progress)
    moved = holders.first_after(fault_at, lambda held: held == other)
    backup = states.first_after(restored_at, lambda state: state == "BACKUP")
    holders_after = [value for when, value in holders.changes if when >= (moved or fault_at)]
    figures = client_figures(read_outcomes(out), fault_at, moved)
    return {
        "drill": "gateway-failover", "kill": kill, "rate": rate, "active": active,
        "backup": other,
        "address_moved_s": None if moved is None else round(moved - fault_at, 2),
        "back_as_backup_s": None if backup is None else round(backup - restored_at, 2),
        # Holder changes after the move: 0 is no flap back.
        "flaps": max(0, len([v for v in holders_after if v is not None]) - 1),
        "holder_timeline": [(round(when - fault_at, 2), value)
                            for when, value in holders.changes],
        **figures,
    }


def _routes_to(lab: PairLab, gateway: str, replicas: frozenset[str]) -> bool:
    return bool(lab.serving(gateway) & replicas)


def replica_host_loss(lab: PairLab, rate: float, times: DrillTimes, out: Path,
                      progress: Progress) -> dict[str, Any]:
    """Pull one replica host's link; when each gateway stopped and resumed
    routing to its replicas, and what clients saw."""
    host = lab.replica_hosts[0]
    lost = lab.host_replicas(host)
    progress(f"{rate:g} streams/s through {lab.vip}; pulling {host}'s link after "
             f"{times.before_s:g}s")
    deadline = time.monotonic() + 30
    while not all(lost <= lab.serving(g) for g in GATEWAYS):
        if time.monotonic() > deadline:
            raise ClusterError(f"the gateways do not route to every replica of {host}: "
                               + "; ".join(f"{g}: {sorted(lab.serving(g))}" for g in GATEWAYS))
        time.sleep(0.2)
    with ExitStack() as stack:
        timelines = {g: stack.enter_context(watching(partial(_routes_to, lab, g, lost)))
                     for g in GATEWAYS}
        fault_at, restored_at = _run_load(lab, rate, times, out,
                                          lambda: lab.net.set_link(host, False),
                                          lambda: lab.net.set_link(host, True), progress)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(lost <= lab.serving(g) for g in GATEWAYS):
            time.sleep(0.2)
    result: dict[str, Any] = {"drill": "replica-host-loss", "rate": rate, "host": host,
                              "replicas": sorted(lost)}
    for gateway, timeline in timelines.items():
        left = timeline.first_after(fault_at, lambda routed: not routed)
        back = timeline.first_after(restored_at, lambda routed: routed)
        result[f"{gateway}_out_of_rotation_s"] = None if left is None else round(left - fault_at, 2)
        result[f"{gateway}_back_s"] = None if back is None else round(back - restored_at, 2)
    result.update(client_figures(read_outcomes(out), fault_at))
    return result


def settle(lab: PairLab, progress: Progress, timeout_s: float = 60.0) -> None:
    """Wait until one gateway holds the address and the other stands by."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        holder = lab.holder()
        if holder in GATEWAYS:
            other = next(g for g in GATEWAYS if g != holder)
            if _keepalived_state(lab, other) == "BACKUP":
                progress(f"{holder} holds {lab.vip}, {other} stands by")
                return
        time.sleep(0.5)
    raise ClusterError(f"the pair did not settle within {timeout_s:g}s "
                       f"(holder: {lab.holder()})",
                       hint=f"see {lab.workdir}/gw-*/logs/keepalived.log")


def key_fan_out(lab: PairLab, timeout_s: float = 30.0) -> dict[str, Any]:
    """A key added on the gateway that holds the address, timed until the other
    gateway answers it (its own address, not the virtual IP)."""
    holder = lab.holder()
    if holder not in GATEWAYS:
        raise ClusterError(f"the virtual IP is held by {holder!r}, not one gateway")
    other = next(g for g in GATEWAYS if g != holder)
    started = time.time()
    key = lab.add_key(f"fan-out-{int(started)}", on=holder)
    added = time.time()
    while lab.status_code(lab.gateway_url(other), key) != 200:
        if time.time() - started > timeout_s:
            return {"added_on": holder, "works_through": other, "works_after_s": None}
        time.sleep(0.05)
    return {"added_on": holder, "works_through": other,
            "command_s": round(added - started, 2),
            "works_after_s": round(time.time() - started, 2)}


def pair_differences(lab: PairLab, gateway: str) -> list[str]:
    """What `fleet status` on ``gateway`` says differs from its peer."""
    pair = lab.status(gateway).get("pair", {})
    return [line for peer in pair.get("peers", []) for line in peer["differences"]]


def diverged_pair(lab: PairLab, timeout_s: float = 60.0) -> dict[str, Any]:
    """Diverge the pair on purpose (a key added while the peer's controller is
    down), read `fleet status`, then mend it with `fleet keys push`."""
    lab.supervisor("gw-b").stop_process("controller")
    try:
        lab.add_key(f"diverged-{int(time.time())}")
        refused = None
    except ClusterError as exc:
        lines = exc.message.splitlines()
        refused = next((line for line in lines if line.startswith("error:")), lines[-1])
    finally:
        lab.supervisor("gw-b").start_process("controller")
    # Until the peer's controller answers again: before that, status says only
    # that it does not answer.
    deadline = time.monotonic() + timeout_s
    flagged = pair_differences(lab, "gw-a")
    while (not any(KEYS_DIFFER in line for line in flagged)
           and time.monotonic() < deadline):
        time.sleep(0.5)
        flagged = pair_differences(lab, "gw-a")
    lab.fleet("gw-a", "keys", "push")
    return {"add_refused": refused, "status_flagged": flagged,
            "after_push": pair_differences(lab, "gw-a")}


def added_latency(lab: PairLab, requests: int, out: Path) -> dict[str, Any]:
    """Short answers through the virtual IP against straight from one replica,
    from the client host: what the pair's gateway adds (p50, p99, in ms)."""
    replica = sorted(lab.host_replicas(lab.replica_hosts[0]))[0]
    argv = lab.net.run_in(CLIENT) + [
        lab.python, "-m", "router.bench.vip_load", "--url", lab.url, "--key", lab.key,
        "--model", SIM_SERVED_MODEL_NAME, "--compare", f"direct=http://{replica}",
        "--requests", str(requests), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=requests * 2 + 60,
                          check=False)
    if proc.returncode != 0:
        raise ClusterError("the latency client failed: " + proc.stderr[-800:])
    seconds = json.loads(out.read_text(encoding="utf-8"))
    figures: dict[str, Any] = {"requests": requests, "replica": replica}
    for name, values in seconds.items():
        figures[f"{name}_p50_ms"] = round(percentile(values, 50) * 1000, 2)
        figures[f"{name}_p99_ms"] = round(percentile(values, 99) * 1000, 2)
    figures["added_p50_ms"] = round(figures["pair_p50_ms"] - figures["direct_p50_ms"], 2)
    figures["added_p99_ms"] = round(figures["pair_p99_ms"] - figures["direct_p99_ms"], 2)
    return figures
