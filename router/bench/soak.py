"""`fleet bench soak`: a simulated fleet for half an hour under faults and changes.

One `fleet up` of four simulated replicas with API keys on and small log
rotation limits, then three parts, each measured from the client's side and
from /proc:

1. **Soak**: Poisson load at a share of the fleet's measured capacity, half
   streamed, half not, for ``minutes``; a replica SIGKILLed every
   ``kill_every_s``, a weight pinned every ``weight_every_s`` (a reload), an
   API key added every ``key_every_s`` (another reload). Every
   ``sample_every_s``: resident memory of nginx (master and workers), the
   controller, Prometheus, mtail and supervisord, nginx's workers (and those
   still shutting down after a reload), open file descriptors, and the
   runtime directory's disk use.
2. **Gateway kill**: under load, nginx's master SIGKILLed a few times;
   probes of the gateway every 10 ms measure the gap clients see.
3. **Reload storm**: a closed loop of long streams while nginx reloads
   every second: streams broken, and how many workers pile up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from router.bench import fleets, load, stats
from router.bench.drill import FaultInjector
from router.bench.fleets import Fleet, Progress
from router.bench.scenario_kit import POLICY_SIM, calibrate
from router.bench.scenarios.reloads import reload_every
from router.disk.paths import RuntimePaths, folder_bytes
from router.errors import ClusterError
from router.runtime.cluster import controller_call
from router.runtime.procs import cmdline, descendants, open_fds, process_alive, rss_bytes
from router.runtime.state import ClusterState
from router.runtime.supervise import Supervisor

# The processes whose memory is followed, by supervisord program name.
WATCHED = ("gateway", "controller", "prometheus", "log-exporter")
SHUTTING_DOWN = "nginx: worker process is shutting down"
# Failures a client sees before any byte of an answer.
GAP_PROBE_S = 0.01


@dataclass(frozen=True)
class SoakSize:
    minutes: float = 30.0
    load_share: float = 0.7
    kill_every_s: float = 300.0
    weight_every_s: float = 60.0
    key_every_s: float = 600.0
    sample_every_s: float = 10.0
    # Memory growth is judged from here to the end (the minute 5).
    growth_from_s: float = 300.0
    calibrate_s: float = 10.0
    output_tokens: load.Range = (64, 128)
    rotate_size_mb: int = 2
    keep: int = 3
    gateway_kills: int = 3
    gateway_kill_spacing_s: float = 20.0
    storm_streams: int = 300
    storm_s: float = 120.0
    storm_reload_every_s: float = 1.0
    storm_output_tokens: load.Range = (300, 600)
    storm_sample_every_s: float = 1.0


FULL = SoakSize()
TINY = SoakSize(minutes=0.4, kill_every_s=8.0, weight_every_s=4.0, key_every_s=10.0,
                sample_every_s=1.0, growth_from_s=5.0, calibrate_s=1.5, output_tokens=(8, 16),
                rotate_size_mb=1, gateway_kills=1, gateway_kill_spacing_s=2.0,
                storm_streams=16, storm_s=4.0, storm_reload_every_s=0.5,
                storm_output_tokens=(20, 40), storm_sample_every_s=0.5)


@dataclass
class SoakResult:
    size: SoakSize
    rate: float
    capacity: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    runs: list[load.RunResult] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    kill_run: load.RunResult | None = None
    storm_run: load.RunResult | None = None
    storm_samples: list[dict[str, Any]] = field(default_factory=list)
    storm_reloads: list[float] = field(default_factory=list)
    worker_processes: int = 0
    worker_shutdown_timeout_s: float = 0.0
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)


# ------------------------------------------------------------- sampling

def _nginx(paths: RuntimePaths) -> tuple[int | None, list[int], list[int]]:
    """The master, its serving workers, and its workers still shutting down."""
    try:
        master = int(paths.nginx_pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None, [], []
    if not process_alive(master):
        return None, [], []
    children = descendants(master)
    titles = {pid: cmdline(pid).strip() for pid in children}
    old = [pid for pid, title in titles.items() if title.startswith(SHUTTING_DOWN)]
    serving = [pid for pid, title in titles.items()
               if title.startswith("nginx: worker process") and pid not in old]
    return master, serving, old


class Sampler:
    """Reads /proc for the cluster's own processes; remembers old workers' ages."""

    def __init__(self, paths: RuntimePaths) -> None:
        self.paths = paths
        self.supervisor = Supervisor(paths)
        self.old_seen: dict[int, float] = {}

    def sample(self, t: float) -> dict[str, Any]:
        pids = {p.name: p.pid for p in self.supervisor.processes() if p.name in WATCHED and p.pid}
        master, serving, old = _nginx(self.paths)
        groups: dict[str, list[int]] = {
            name: [pid, *descendants(pid)] for name, pid in pids.items() if name != "gateway"}
        # Workers shutting down after a reload are counted, not weighed: they
        # come and go with reloads and would make nginx's memory look like noise.
        groups["nginx"] = [p for p in (master, *serving) if p]
        supervisord = self.supervisor.pid()
        groups["supervisord"] = [supervisord] if supervisord else []
        now = time.monotonic()
        for pid in old:
            self.old_seen.setdefault(pid, now)
        for pid in [p for p in self.old_seen if p not in old]:
            del self.old_seen[pid]
        return {
            "t": t,
            "rss_mib": {name: sum(rss_bytes(p) for p in members) / 2**20
                        for name, members in groups.items()},
            "fds": sum(open_fds(p) for members in groups.values() for p in members),
            "workers": len(serving), "old_workers": len(old),
            "oldest_old_worker_s": max((now - at for at in self.old_seen.values()), default=0.0),
            "disk_mib": folder_bytes(self.paths.root) / 2**20,
            "logs_mib": folder_bytes(self.paths.logs_dir) / 2**20,
        }


async def _sample_every(sampler: Sampler, every_s: float, into: list[dict[str, Any]],
                        start: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            into.append(await asyncio.to_thread(sampler.sample, time.perf_counter() - start))
        except ClusterError:
            pass  # supervisord busy for a moment; the next sample counts
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass


# ------------------------------------------------------------- the events

def add_key(fleet: Fleet, name: str) -> str:
    """`fleet keys add NAME`, as an operator runs it; the new key's secret."""
    done = subprocess.run([sys.executable, "-m", "router.cli", "keys", "add", name,
                           "--spec", str(fleet.spec_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ClusterError(f"fleet keys add {name} failed: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str  # kill, weight, key
    index: int


def schedule(size: SoakSize, duration_s: float) -> list[Event]:
    """Every event of a soak, in time order (none at 0: the load starts first)."""
    events = []
    for kind, every in (("kill", size.kill_every_s), ("weight", size.weight_every_s),
                        ("key", size.key_every_s)):
        count = int(duration_s // every)
        events += [Event(every * (i + 1), kind, i) for i in range(count)
                   if every * (i + 1) < duration_s]
    return sorted(events, key=lambda e: (e.at_s, e.kind))


def _apply(fleet: Fleet, event: Event) -> str:
    paths = RuntimePaths(fleet.spec.runtime_dir)
    state = ClusterState.load(paths)
    assert state is not None
    names = [r.name for r in state.replicas]
    replica = names[event.index % len(names)]
    if event.kind == "kill":
        url = next(r.url for r in state.replicas if r.name == replica)
        FaultInjector(paths, replica, url, "sim").apply("kill")
        return f"SIGKILL {replica}"
    if event.kind == "weight":
        weight = (10, 30, 70, 90)[event.index % 4]
        controller_call(paths, state, "POST", f"/replicas/{replica}/weight",
                        {"weight": weight, "ttl_s": 20}, required=True)
        return f"pin {replica} at {weight} for 20 s"
    add_key(fleet, f"soak-{event.index}")
    return f"API key soak-{event.index} added"


async def _run_events(fleet: Fleet, events: list[Event], start: float,
                      into: list[dict[str, Any]], stop: asyncio.Event) -> None:
    for event in events:
        delay = start + event.at_s - time.perf_counter()
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, delay))
            return
        except TimeoutError:
            pass
        t = time.perf_counter() - start
        try:
            what = await asyncio.to_thread(_apply, fleet, event)
            into.append({"t": t, "kind": event.kind, "what": what, "ok": True})
        except (ClusterError, OSError) as exc:
            into.append({"t": t, "kind": event.kind, "what": str(exc), "ok": False})


# ------------------------------------------------------------- the parts

def _workloads(size: SoakSize, tokens: load.Range, seed: int) -> tuple[load.Workload, ...]:
    return tuple(load.Workload(model="sim-model", stream=stream, prompt_words=(32, 64),
                               output_tokens=tokens, seed=seed + i)
                 for i, stream in enumerate((True, False)))


async def soak_part(fleet: Fleet, size: SoakSize, rate: float, key: str,
                    result: SoakResult) -> None:
    duration = size.minutes * 60
    stop = asyncio.Event()
    start = time.perf_counter()
    sampler = Sampler(RuntimePaths(fleet.spec.runtime_dir))
    helpers = [
        asyncio.create_task(_sample_every(sampler, size.sample_every_s, result.samples,
                                          start, stop)),
        asyncio.create_task(_run_events(fleet, schedule(size, duration), start,
                                        result.events, stop)),
    ]
    try:
        result.runs = list(await asyncio.gather(*(
            load.run(fleet.gateway_url, workload, load.Arrivals("poisson", rate=rate / 2),
                     duration, key=key, sample_weights=False)
            for workload in _workloads(size, size.output_tokens, 0))))
    finally:
        stop.set()
        await asyncio.gather(*helpers)


async def _probe_gateway(url: str, into: list[tuple[float, bool]], start: float,
                         stop: asyncio.Event) -> None:
    # A new connection for every probe: a kept-alive one would hide refusals.
    async with httpx.AsyncClient(timeout=1.0, limits=httpx.Limits(max_keepalive_connections=0)
                                 ) as client:
        while not stop.is_set():
            t = time.perf_counter() - start
            try:
                ok = (await client.get(f"{url}/health")).status_code == 200
            except httpx.HTTPError:
                ok = False
            into.append((t, ok))
            await asyncio.sleep(GAP_PROBE_S)


def gaps(probes: list[tuple[float, bool]], at_s: float, window_s: float) -> dict[str, Any]:
    """Failed probes after a kill at ``at_s``, and the longest time without a success."""
    around = [(t, ok) for t, ok in probes if at_s - 0.5 <= t <= at_s + window_s]
    failed = [t for t, ok in around if not ok]
    longest, last_ok = 0.0, None
    for t, ok in around:
        if ok:
            if last_ok is not None:
                longest = max(longest, t - last_ok)
            last_ok = t
    return {"probes": len(around), "failed": len(failed), "longest_gap_s": longest}


async def gateway_kill_part(fleet: Fleet, size: SoakSize, rate: float, key: str,
                            result: SoakResult, progress: Progress) -> None:
    paths = RuntimePaths(fleet.spec.runtime_dir)
    stop = asyncio.Event()
    start = time.perf_counter()
    probes: list[tuple[float, bool]] = []
    prober = asyncio.create_task(_probe_gateway(fleet.gateway_url, probes, start, stop))
    duration = size.gateway_kill_spacing_s * (size.gateway_kills + 1)
    loader = asyncio.create_task(load.run(
        fleet.gateway_url, _workloads(size, size.output_tokens, 7)[1],
        load.Arrivals("poisson", rate=rate / 2), duration, key=key, sample_weights=False))
    try:
        for _ in range(size.gateway_kills):
            await asyncio.sleep(size.gateway_kill_spacing_s)
            master = int(paths.nginx_pid.read_text().strip())
            at = time.perf_counter() - start
            os.kill(master, signal.SIGKILL)
            result.kills.append({"t": at, "master": master})
            progress(f"soak: gateway kill: SIGKILL nginx master {master}")
        result.kill_run = await loader
    finally:
        stop.set()
        await prober
    for kill in result.kills:
        kill.update(gaps(probes, kill["t"], size.gateway_kill_spacing_s))


async def storm_part(fleet: Fleet, size: SoakSize, key: str, result: SoakResult) -> None:
    paths = RuntimePaths(fleet.spec.runtime_dir)
    stop = asyncio.Event()
    start = time.perf_counter()
    sampler = Sampler(paths)
    sampling = asyncio.create_task(_sample_every(sampler, size.storm_sample_every_s,
                                                 result.storm_samples, start, stop))
    reloading = asyncio.create_task(reload_every(paths, size.storm_reload_every_s, stop,
                                                 result.storm_reloads, start))
    workload = load.Workload(model="sim-model", prompt_words=(32, 64),
                             output_tokens=size.storm_output_tokens, seed=11)
    try:
        result.storm_run = await load.run(
            fleet.gateway_url, workload, load.Arrivals("closed", concurrency=size.storm_streams),
            size.storm_s, key=key, sample_weights=False, stop=None)
        stop.set()
        await reloading
        # Then watch the old workers leave: as long as the longest stream took.
        longest = max((r.e2e or 0.0 for r in result.storm_run.records), default=0.0)
        deadline = time.perf_counter() + longest + 5 * size.storm_sample_every_s
        while time.perf_counter() < deadline:
            if _nginx(paths)[2] == []:
                break
            await asyncio.sleep(size.storm_sample_every_s)
        result.storm_samples.append(sampler.sample(time.perf_counter() - start))
    finally:
        stop.set()
        await sampling


# ------------------------------------------------------------- targets

def _before_first_byte(runs: list[load.RunResult]) -> int:
    return sum(stats.failed_before_first_byte(run.records) for run in runs)


def _mid_stream(runs: list[load.RunResult]) -> int:
    return sum(1 for run in runs for r in run.records if r.error_phase == stats.MID_STREAM)


def memory_growth(samples: list[dict[str, Any]], from_s: float) -> dict[str, float | None]:
    """Per process: RSS at the end against RSS at ``from_s``, as a ratio - 1."""
    if not samples:
        return {}
    first = min(samples, key=lambda s: abs(s["t"] - from_s))
    last = samples[-1]
    return {name: (last["rss_mib"].get(name, 0.0) / value - 1.0) if value else None
            for name, value in first["rss_mib"].items()}


def judge(result: SoakResult) -> None:
    size = result.size
    failed = _before_first_byte(result.runs)
    total = sum(len(run.records) for run in result.runs)
    result.targets.append(("0 requests failed before their first byte during the soak",
                           f"{failed} of {total:,}", failed == 0))
    growth = memory_growth(result.samples, size.growth_from_s)
    worst = max(((n, g) for n, g in growth.items() if g is not None),
                key=lambda item: item[1], default=("-", 0.0))
    result.targets.append((
        f"memory growth under 10 % from minute {size.growth_from_s / 60:.1f} to the end, "
        "every process", f"largest: {worst[0]} {worst[1]:+.1%}", worst[1] < 0.10))
    oldest = max((s["oldest_old_worker_s"] for s in result.samples), default=0.0)
    result.targets.append((
        f"old nginx workers gone within worker_shutdown_timeout "
        f"({result.worker_shutdown_timeout_s:g} s) after every reload",
        f"oldest seen {oldest:.0f} s", oldest < result.worker_shutdown_timeout_s))
    bound = (size.keep + 1) * size.rotate_size_mb
    peak_logs = max((s["logs_mib"] for s in result.samples), default=0.0)
    result.targets.append((
        f"logs bounded by rotation: at most (keep + 1) x rotate_size_mb = {bound} MiB",
        f"peak {peak_logs:.1f} MiB", peak_logs <= bound))
    if result.storm_run is not None:
        broken = _mid_stream([result.storm_run]) + _before_first_byte([result.storm_run])
        result.targets.append((
            f"reload storm: no stream broken ({size.storm_streams} streams, a reload every "
            f"{size.storm_reload_every_s:g} s for {size.storm_s:g} s)",
            f"{broken} of {len(result.storm_run.records):,} broken", broken == 0))
        peak = max((s["workers"] + s["old_workers"] for s in result.storm_samples), default=0)
        end = result.storm_samples[-1] if result.storm_samples else None
        settled = end is not None and end["old_workers"] == 0
        result.targets.append((
            "reload storm: workers bounded, and back to worker_processes "
            f"({result.worker_processes}) once the streams end",
            f"peak {peak} worker processes; after the storm "
            f"{end['workers'] + end['old_workers'] if end else '?'}", settled))


# ------------------------------------------------------------- the run

def run_soak(work_dir: Path, size: SoakSize, progress: Progress) -> SoakResult:
    spec_data = fleets.sim_fleet_spec(
        work_dir / "runtime", 4, {"defaults": POLICY_SIM},
        auth={"enabled": True},
        logs={"rotate_size_mb": size.rotate_size_mb, "keep": size.keep,
              "check_interval_s": 5})
    progress("soak: fleet up (4 simulated replicas, API keys on)")
    with fleets.running_fleet(spec_data, work_dir / "spec.yaml", lambda _m: None) as fleet:
        key = add_key(fleet, "soak-load")
        workload = _workloads(size, size.output_tokens, 0)[0]
        capacity, _ = calibrate(fleet, workload, size.calibrate_s)
        rate = size.load_share * capacity
        result = SoakResult(size=size, rate=rate, capacity=capacity,
                            worker_shutdown_timeout_s=fleet.spec.gateway.worker_shutdown_timeout_s)
        progress(f"soak: capacity {capacity:.1f} requests/s; {size.minutes:g} min at "
                 f"{rate:.1f} requests/s ({size.load_share:.0%})")
        asyncio.run(soak_part(fleet, size, rate, key, result))
        progress(f"soak: done; {len(result.events)} events, "
                 f"{_before_first_byte(result.runs)} failed before the first byte")
        asyncio.run(gateway_kill_part(fleet, size, rate, key, result, progress))
        progress(f"soak: reload storm: {size.storm_streams} streams for {size.storm_s:g} s, "
                 f"a reload every {size.storm_reload_every_s:g} s")
        asyncio.run(storm_part(fleet, size, key, result))
        workers = fleet.spec.gateway.worker_processes
        result.worker_processes = (os.cpu_count() or 1) if workers == "auto" else int(workers)
    judge(result)
    return result


def to_json(result: SoakResult, summarize: Callable[[load.RunResult], dict[str, Any]]
            ) -> dict[str, Any]:
    return {
        "size": asdict(result.size), "capacity_rps": result.capacity, "rate_rps": result.rate,
        "soak": {"runs": [summarize(run) for run in result.runs],
                 "failed_before_first_byte": _before_first_byte(result.runs),
                 "failed_mid_stream": _mid_stream(result.runs),
                 "memory_growth": memory_growth(result.samples, result.size.growth_from_s),
                 "samples": result.samples, "events": result.events},
        "gateway_kills": {"kills": result.kills,
                          "run": summarize(result.kill_run) if result.kill_run else None},
        "storm": {"run": summarize(result.storm_run) if result.storm_run else None,
                  "reloads": len(result.storm_reloads), "samples": result.storm_samples},
        "targets": [{"target": t, "figure": f, "met": m} for t, f, m in result.targets],
    }
