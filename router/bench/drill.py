"""`fleet drill kill|hang|slow|restart REPLICA`: a fault under load, and what clients saw.

A drill runs Poisson load through the gateway, injects one fault into one
replica of the running cluster, and watches three clocks at once: the
clients' requests, the replica's own /health, and the gateway's
/fleet/status (which replicas nginx routes to, after the controller's
reload took effect). Faults:

- kill: SIGKILL the replica and every process under it (a crash). The
  supervisor starts it again, as it would in production.
- restart: SIGTERM the replica (a graceful stop); the supervisor starts it
  again.
- hang: the replica stops answering with its sockets left open (SIGSTOP of
  its processes for real vLLM, the simulator's hang fault), then resumes.
- slow: the replica runs at a third of its speed for a while: the
  simulator's slow fault, or for real vLLM a stop/continue duty cycle of its
  engine processes (stopped two thirds of every 20 ms), which is how a
  throttled or shared card looks from outside: every step slower, the API
  server streaming each token as it comes, /health still answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
from pydantic import ValidationError

from router.bench import load, stats
from router.config.spec import ClusterSpec
from router.disk.paths import RuntimePaths
from router.errors import ClusterError, SpecError
from router.fleet_status import PublicFleetStatus
from router.runtime.cluster import controller_call
from router.runtime.procs import cmdline, descendants
from router.runtime.state import ClusterState
from router.runtime.supervise import Supervisor
from router.upstream import BASE_WEIGHT

FAULTS = ("kill", "hang", "slow", "restart")
SLOW_FACTOR = 0.33
# One stop/continue cycle of a real replica's engine slowed to SLOW_FACTOR.
# Shorter than a decode step, so every step is stretched alike: with a
# period of a few steps, steps inside a running phase keep full speed and
# the tokens arrive in bursts, a stall pattern rather than a slower card.
DUTY_PERIOD_S = 0.02
# vLLM names its engine processes (setproctitle) VLLM::EngineCore, ::Worker.
ENGINE_TITLE = "VLLM::"
POLL_S = 0.2

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DrillPlan:
    fault: str
    replica: str
    rate: float
    before_s: float = 10.0
    # hang and slow: how long the fault lasts.
    hold_s: float = 20.0
    # kill and restart: how long to wait for the replica to be back.
    recover_timeout_s: float = 180.0
    after_s: float = 10.0
    output_tokens: load.Range = (32, 64)
    # Every replica pinned at the base weight for the whole drill: the
    # gateway is static least_conn, the baseline the controller is judged by.
    static: bool = False

    @property
    def longest_s(self) -> float:
        return self.before_s + self.hold_s + self.recover_timeout_s + self.after_s


@dataclass
class Observation:
    """What the drill saw, in seconds since the load started."""

    fault_at: float | None = None
    cleared_at: float | None = None
    # The replica's own /health: first failure after the fault, first success after that.
    unhealthy_at: float | None = None
    healthy_at: float | None = None
    # The gateway's routing, from /fleet/status.
    out_at: float | None = None
    back_at: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DrillResult:
    plan: DrillPlan
    engine: str
    run: load.RunResult
    seen: Observation
    summary: dict[str, Any]
    windows: dict[str, dict[str, int]]
    measures: dict[str, float | None]
    targets: list[tuple[str, str, bool | None]]


def check_plan(plan: DrillPlan, engine: str, replicas: list[str]) -> None:
    if plan.fault not in FAULTS:
        raise SpecError(f"no drill named {plan.fault!r}", hint="drills are: " + ", ".join(FAULTS))
    if plan.replica not in replicas:
        raise SpecError(f"no replica named {plan.replica!r} in the running cluster",
                        hint="replicas are: " + ", ".join(replicas))
    if engine == "external":
        raise SpecError("replicas of engine: external are not started by llm-fleet, so a drill "
                        "cannot signal them", hint="run the drill where the replicas run")
    if plan.rate <= 0:
        raise SpecError("--load must be above 0 requests/s", hint="e.g. --load 10")


class DutyCycle:
    """Runs processes a fraction of the time: SIGSTOP for the rest of every
    period, from a thread, until stopped; they are always left running."""

    def __init__(self, pids: list[int], running_fraction: float,
                 period_s: float = DUTY_PERIOD_S) -> None:
        if not 0 < running_fraction < 1:
            raise ValueError(f"running_fraction must be in (0, 1), not {running_fraction}")
        self.pids = pids
        self.run_s = period_s * running_fraction
        self.stop_s = period_s - self.run_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._cycle, name="duty-cycle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        for pid in self.pids:
            _signal(pid, sig)

    def _cycle(self) -> None:
        try:
            while not self._done.is_set():
                self._signal_all(signal.SIGSTOP)
                if self._done.wait(self.stop_s):
                    break
                self._signal_all(signal.SIGCONT)
                self._done.wait(self.run_s)
        finally:
            self._signal_all(signal.SIGCONT)


class FaultInjector:
    """Applies and clears a fault on one replica."""

    def __init__(self, paths: RuntimePaths, replica: str, url: str, engine: str) -> None:
        self.supervisor = Supervisor(paths)
        self.replica, self.url, self.engine = replica, url, engine
        self.stopped: list[int] = []
        self.throttle: DutyCycle | None = None

    def _tree(self) -> list[int]:
        info = self.supervisor.process(self.replica)
        if not info.pid:
            raise ClusterError(f"{self.replica} is not running ({info.state})",
                               hint="see `fleet status`; wait until it is RUNNING")
        return [info.pid, *descendants(info.pid)]

    def _engine(self) -> list[int]:
        """The processes that run the model; the whole tree for an engine that
        runs inside its API server."""
        tree = self._tree()
        engine = [pid for pid in tree if cmdline(pid).startswith(ENGINE_TITLE)]
        return engine or tree

    def _sim_faults(self, **faults: object) -> None:
        response = requests.post(f"{self.url}/sim/faults", json=faults, timeout=5)
        response.raise_for_status()

    def apply(self, fault: str) -> None:
        if fault == "kill":
            for pid in self._tree():
                _signal(pid, signal.SIGKILL)
        elif fault == "restart":
            _signal(self._tree()[0], signal.SIGTERM)
        elif fault == "hang" and self.engine == "sim":
            self._sim_faults(hang=True)
        elif fault == "hang":
            self.stopped = self._tree()
            for pid in self.stopped:
                _signal(pid, signal.SIGSTOP)
        elif fault == "slow" and self.engine == "sim":
            self._sim_faults(slow=SLOW_FACTOR)
        elif fault == "slow":
            self.throttle = DutyCycle(self._engine(), SLOW_FACTOR)
            self.throttle.start()

    def clear(self, fault: str) -> None:
        if fault == "hang" and self.engine == "sim":
            self._sim_faults(hang=False)
        elif fault == "hang":
            for pid in self.stopped:
                _signal(pid, signal.SIGCONT)
        elif fault == "slow" and self.engine == "sim":
            self._sim_faults(slow=1.0)
        elif fault == "slow" and self.throttle is not None:
            self.throttle.stop()
            self.throttle = None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def _watch(gateway: str, replica_url: str, replica: str, key: str | None,
                 seen: Observation, start: float, done: asyncio.Event) -> None:
    """Poll the replica's /health and the gateway's /fleet/status, each on its
    own clock, so a hung replica's health timeout does not slow the other."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    state: dict[str, Any] = {"healthy": True}

    def after_fault(now: float) -> bool:
        return seen.fault_at is not None and now >= seen.fault_at

    async def health(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            try:
                healthy = (await client.get(f"{replica_url}/health")).status_code == 200
            except httpx.HTTPError:
                healthy = False
            now = time.perf_counter() - start
            state["healthy"] = healthy
            if after_fault(now):
                if not healthy and seen.unhealthy_at is None:
                    seen.unhealthy_at = now
                if healthy and seen.unhealthy_at is not None and seen.healthy_at is None \
                        and (seen.cleared_at is None or now >= seen.cleared_at):
                    seen.healthy_at = now
            await asyncio.sleep(POLL_S)

    async def routing(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            routed: bool | None = None
            weights: dict[str, int] = {}
            try:
                response = await client.get(f"{gateway}/fleet/status", headers=headers)
                if response.status_code == 200:
                    status = PublicFleetStatus.model_validate_json(response.content)
                    weights = status.routed_weights()
                    routed = next((r.routed for r in status.replicas if r.name == replica), None)
            except (httpx.HTTPError, ValidationError):
                pass
            now = time.perf_counter() - start
            seen.samples.append({"t": now, "healthy": state["healthy"], "routed": routed,
                                 "weights": weights})
            if after_fault(now):
                if routed is False and seen.out_at is None:
                    seen.out_at = now
                if routed and seen.out_at is not None and seen.back_at is None:
                    seen.back_at = now
            await asyncio.sleep(POLL_S)

    async with httpx.AsyncClient(timeout=1.0) as client:
        await asyncio.gather(health(client), routing(client))


async def _drill(plan: DrillPlan, gateway: str, replica_url: str, key: str | None,
                 injector: FaultInjector, model: str | None, progress: Progress
                 ) -> tuple[load.RunResult, Observation]:
    seen = Observation()
    stop, watching = asyncio.Event(), asyncio.Event()
    workload = load.Workload(model=model, output_tokens=plan.output_tokens)
    limit = plan.longest_s
    loader = asyncio.create_task(load.run(gateway, workload, load.Arrivals("poisson", plan.rate),
                                          limit, key, sample_weights=False, stop=stop))
    start = time.perf_counter()
    watcher = asyncio.create_task(_watch(gateway, replica_url, plan.replica, key, seen, start,
                                         watching))
    try:
        await asyncio.sleep(plan.before_s)
        progress(f"{plan.fault} {plan.replica}")
        seen.fault_at = time.perf_counter() - start
        await asyncio.to_thread(injector.apply, plan.fault)
        if plan.fault in ("hang", "slow"):
            await asyncio.sleep(plan.hold_s)
            progress(f"clearing {plan.fault} of {plan.replica}")
            seen.cleared_at = time.perf_counter() - start
            await asyncio.to_thread(injector.clear, plan.fault)
        deadline = time.perf_counter() + plan.recover_timeout_s
        # Back means routed again after having left; a replica never taken out
        # (a slow one, or one back before its probes failed) is back when healthy.
        while time.perf_counter() < deadline:
            routed_now = bool(seen.samples) and seen.samples[-1]["routed"]
            if seen.back_at is not None or (
                    seen.out_at is None and routed_now
                    and (plan.fault == "slow" or seen.healthy_at is not None)):
                break
            await asyncio.sleep(POLL_S)
        else:
            progress(f"{plan.replica} was not back within {plan.recover_timeout_s:g}s")
        await asyncio.sleep(plan.after_s)
    finally:
        if plan.fault in ("hang", "slow") and seen.cleared_at is None:
            injector.clear(plan.fault)
        stop.set()
    run = await loader
    watching.set()
    await watcher
    run.weights = [{"t": s["t"], "weights": s["weights"]} for s in seen.samples if s["weights"]]
    return run, seen


BEFORE, DURING, AFTER = "before the fault", "during the fault", "after"


def window_bounds(seen: Observation) -> dict[str, tuple[float, float]]:
    """Before the fault; from the fault until the replica was back in
    rotation (or, if it never left, until the fault was cleared or it was
    healthy again); after that."""
    fault = seen.fault_at or 0.0
    end = seen.back_at
    if end is None and seen.out_at is None:
        end = seen.cleared_at or seen.healthy_at
    end = float("inf") if end is None else end
    return {BEFORE: (0.0, fault), DURING: (fault, end), AFTER: (end, float("inf"))}


def _windows(records: list[stats.RequestRecord], seen: Observation) -> dict[str, dict[str, int]]:
    """Requests and failures by phase in each window of window_bounds."""
    out: dict[str, dict[str, int]] = {}
    for name, (low, high) in window_bounds(seen).items():
        inside = [r for r in records if low <= r.start < high]
        failed = [r for r in inside if not r.ok]
        out[name] = {"requests": len(inside), "failed": len(failed),
                     **{phase: sum(1 for r in failed if (r.error_phase or stats.HTTP_STATUS)
                                   == phase) for phase in stats.PHASES}}
    return out


def _weights_of(seen: Observation, replica: str, low: float, high: float) -> list[int]:
    return [s["weights"][replica] for s in seen.samples
            if low <= s["t"] < high and replica in s.get("weights", {})]


def _delta(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def running_cluster(spec: ClusterSpec) -> tuple[RuntimePaths, ClusterState]:
    """The cluster a drill acts on; raises when none runs under supervisord."""
    paths = RuntimePaths(spec.runtime_dir)
    state = ClusterState.load(paths)
    if state is None or not Supervisor(paths).is_running():
        raise ClusterError("no cluster is running", hint="start one with `fleet up`, then drill")
    return paths, state


def run_drill(spec: ClusterSpec, plan: DrillPlan, key: str | None,
              progress: Progress) -> DrillResult:
    paths, state = running_cluster(spec)
    replicas = {r.name: r.url for r in state.replicas}
    engine = state.engine
    check_plan(plan, engine, list(replicas))
    if state.controller_url is None:
        raise SpecError("a drill watches the controller's view of the fleet; this cluster runs "
                        "without it", hint="set controller.enabled: true")
    injector = FaultInjector(paths, plan.replica, replicas[plan.replica], engine)
    progress(f"{plan.rate:g} requests/s through {state.gateway_url} for {plan.before_s:g}s, "
             f"then {plan.fault} {plan.replica}")
    with _static_weights(paths, state, plan, progress):
        run, seen = asyncio.run(_drill(plan, state.gateway_url, replicas[plan.replica], key,
                                       injector, state.served_model_name, progress))
    summary = stats.summarize(run.records, run.duration_s, stats.Slo())
    windows = _windows(run.records, seen)
    not_started = sum(windows[w][p] for w in windows
                      for p in stats.NOT_STARTED)
    measures = {
        "out_of_rotation_after_fault_s": _delta(seen.out_at, seen.fault_at),
        "unhealthy_after_fault_s": _delta(seen.unhealthy_at, seen.fault_at),
        "healthy_after_fault_s": _delta(seen.healthy_at, seen.fault_at),
        "back_after_healthy_s": _delta(seen.back_at, seen.healthy_at),
        "failed_before_first_byte": float(not_started),
        "failed_mid_stream": float(sum(w[stats.MID_STREAM] for w in windows.values())),
    }
    bounds = window_bounds(seen)
    before = _weights_of(seen, plan.replica, *bounds[BEFORE])
    during = _weights_of(seen, plan.replica, *bounds[DURING])
    measures["weight_before"] = float(before[-1]) if before else None
    measures["weight_lowest_during"] = float(min(during)) if during else None
    # How long the controller took to cut the weight to half of what it was.
    half = (before[-1] / 2) if before else None
    measures["weight_halved_after_fault_s"] = next(
        (s["t"] - (seen.fault_at or 0.0) for s in seen.samples
         if half is not None and s["t"] >= (seen.fault_at or 0.0)
         and s.get("weights", {}).get(plan.replica, half + 1) <= half), None)
    # How long after the fault ended it had 80 % of its old weight again.
    regained = 0.8 * before[-1] if before else None
    measures["weight_regained_after_clear_s"] = next(
        (s["t"] - seen.cleared_at for s in seen.samples
         if regained is not None and seen.cleared_at is not None and s["t"] >= seen.cleared_at
         and s.get("weights", {}).get(plan.replica, 0) >= regained), None)
    during_records = [r for r in run.records if bounds[DURING][0] <= r.start < bounds[DURING][1]]
    measures["share_during"] = (sum(1 for r in during_records if r.replica == plan.replica)
                                / len(during_records)) if during_records else None
    targets: list[tuple[str, str, bool | None]] = []
    if plan.fault == "slow" and not plan.static:
        halved = measures["weight_halved_after_fault_s"]
        regained_s = measures["weight_regained_after_clear_s"]
        targets = [
            ("weight halved within 5 s of the slowdown", _secs(halved),
             None if halved is None else halved <= 5.0),
            ("back to at least 80 % of its weight within 20 s of the fault ending",
             _secs(regained_s), None if regained_s is None else regained_s <= 20.0),
        ]
    if plan.fault == "kill":
        out, back = measures["out_of_rotation_after_fault_s"], measures["back_after_healthy_s"]
        targets = [
            ("zero failed requests that had not started streaming", f"{not_started}",
             not_started == 0),
            ("out of rotation within 2 s", _secs(out), None if out is None else out <= 2.0),
            ("back within 5 s of healthy", _secs(back), None if back is None else back <= 5.0),
        ]
    return DrillResult(plan, engine, run, seen, summary, windows, measures, targets)


@contextlib.contextmanager
def _static_weights(paths: RuntimePaths, state: ClusterState, plan: DrillPlan,
                    progress: Progress) -> Iterator[None]:
    """Pin every replica at the base weight for the drill when it asks for
    static weights; the pins go when the drill ends, however it ends."""
    if not plan.static:
        yield
        return
    names = [r.name for r in state.replicas]
    progress(f"static weights: pinning {', '.join(names)} at {BASE_WEIGHT}")
    try:
        for name in names:
            controller_call(paths, state, "POST", f"/replicas/{name}/weight",
                            {"weight": BASE_WEIGHT, "ttl_s": plan.longest_s + 60}, required=True)
        yield
    finally:
        for name in names:
            controller_call(paths, state, "POST", f"/replicas/{name}/weight",
                            {"weight": None})


def _secs(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.1f} s"
