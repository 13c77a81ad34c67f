"""The controller loop: inputs in, decisions out, nginx reloaded.

Every input (router.controller.inputs) is polled on its own schedule and
asks for a decision when what it saw calls for one: the health probes every
``probe_interval_s`` on a flip (a dead replica leaves rotation within about
one to two seconds), Prometheus every ``evaluate_interval_s``, the pace
probes every round. Weight changes go through the hysteresis in
``policy.should_apply``; health changes apply at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from router.config.plan import WarmupPlan
from router.config.spec import ControllerSpec
from router.controller.actuator import ApplyResult
from router.controller.admission import AdmissionInput
from router.controller.budget import BudgetInput
from router.controller.inputs import Input, PaceInput, PrometheusInput
from router.controller.metrics import ControllerMetrics
from router.controller.policy import (
    Decision,
    Override,
    ReplicaSignals,
    Snapshot,
    decide,
    should_apply,
    weights_differ,
)
from router.controller.probes import Prober
from router.controller.processes import ProcessWatch
from router.controller.timer import RealTimer, Timer, every
from router.controller.warmup import warm_up
from router.disk.paths import write_atomic
from router.errors import (
    ConfigWriteFailed,
    NginxReloadFailed,
    NginxTestFailed,
)
from router.fleet_status import (
    CapacityView,
    DecisionRecord,
    FleetStatus,
    Health,
    OverrideView,
    PaceTestView,
    PaceView,
    PrometheusView,
    ReplicaStatus,
    RoomView,
    SignalReading,
)

log = logging.getLogger(__name__)

# Seconds since the epoch; decisions, probes and signal ages all read this one.
Clock = Callable[[], float]
T = TypeVar("T")


class GatewayActuator(Protocol):
    """Makes the gateway run a decision (router.controller.actuator.Actuator)."""

    async def apply(self, decision: Decision, why: str) -> ApplyResult: ...


@dataclass(frozen=True)
class Member:
    """A replica as the controller knows it (from the cluster's state.json)."""

    name: str
    device: str
    url: str

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")


class Controller:
    """Owns the control loop's state; the admin API reads and edits it."""

    def __init__(self, members: Sequence[Member], settings: ControllerSpec,
                 actuator: GatewayActuator, inputs: Sequence[Input] = (), *,
                 overrides_file: Path | None = None, warmup: WarmupPlan | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 latency_memory_s: float = 0.0, clock: Clock = time.time,
                 prober: Prober | None = None, metrics: ControllerMetrics | None = None,
                 affinity: bool = False, timer: Timer | None = None) -> None:
        self.members = list(members)
        self.names = tuple(m.name for m in members)
        self.urls = {m.name: m.url for m in members}
        self.settings = settings
        self.actuator = actuator
        self.clock = clock
        # The loops' interval time: real by default, virtual in tests.
        self.timer = timer or RealTimer()
        self.metrics = metrics or ControllerMetrics()
        # Health comes first: warm-ups, pace targets and failing open read it.
        self.prober = prober or Prober(self.urls, settings, transport, clock)
        self.inputs: tuple[Input, ...] = (self.prober, *inputs)
        # Replicas warmed since they last became healthy, and bursts under way.
        self.warmup = warmup
        self.warmed: set[str] = set()
        self.warming: dict[str, asyncio.Task[None]] = {}
        # How long a warm-up stays in the latency signals (the query window
        # plus a scrape), and when each replica's last one ended.
        self.latency_memory_s = latency_memory_s
        self.warmed_at: dict[str, float] = {}
        self._warmup_client = (httpx.AsyncClient(timeout=warmup.timeout_s, transport=transport)
                               if warmup else None)
        # Admin overrides outlive a controller restart: a drained replica
        # must not come back because supervisord restarted the controller.
        self.overrides_file = overrides_file
        self.overrides: dict[str, Override] = self._load_overrides()
        # The gateway hashes keyed requests onto a ring: the load bound applies.
        self.affinity = affinity
        self.desired: Decision | None = None
        self.applied: Decision | None = None
        self.last_weight_reload_at: float | None = None
        # Since when nginx's weights have differed from the targets.
        self.differing_since: float | None = None
        self.history: deque[DecisionRecord] = deque(maxlen=settings.history)
        self._failures_in_a_row = 0
        self._last_failure: str | None = None
        self._last_failure_logged = 0.0
        self._lock = asyncio.Lock()
        # Set when a warm-up burst ends: the replica may join rotation now.
        self._warmed_one = asyncio.Event()

    def _input(self, kind: type[T]) -> T | None:
        return next((i for i in self.inputs if isinstance(i, kind)), None)

    # --- inputs ------------------------------------------------------------
    def snapshot(self, now: float) -> Snapshot:
        snapshot = Snapshot(now=now, replicas=self.names, overrides=dict(self.overrides),
                            warming=frozenset(self.warming),
                            latency_blind=frozenset(n for n, at in self.warmed_at.items()
                                                    if now - at < self.latency_memory_s),
                            affinity=self.affinity)
        for source in self.inputs:
            snapshot = source.observe(snapshot)
        return snapshot

    def in_rotation(self) -> list[str]:
        """The replicas the gateway sends requests to (what a pace round probes)."""
        applied = self.applied
        return [name for name in self.names
                if self.prober.states[name].health.healthy and name not in self.warming
                and not self.overrides.get(name, Override()).drained
                and (applied is None or not applied.replicas[name].down)]

    async def poll(self, source: Input) -> DecisionRecord | None:
        """Poll one input once, and decide when it asks for a decision."""
        if await self._poll_safely(source):
            return await self.evaluate(source.name)
        return None

    async def _poll_safely(self, source: Input) -> bool:
        try:
            return await source.poll(self.in_rotation())
        except Exception:
            # An input that breaks in an unforeseen way must not stop for
            # good: the weights would hold on ever staler readings.
            log.exception("input failed input=%s decision=hold reason=unexpected error; "
                          "next poll in %.1fs", source.name, source.interval_s)
            return False

    async def _follow(self, source: Input) -> None:
        started = self.timer.monotonic()
        while True:
            await every(self.timer, source.interval_s, started)
            started = self.timer.monotonic()
            await self.poll(source)

    # --- warm-up -------------------------------------------------------------
    def assume_warm(self, names: Iterable[str]) -> None:
        """Replicas that were serving before this controller started (its restart
        by `fleet apply` or supervisord): another burst would take them out."""
        for name in names:
            if name in self.names:
                self.warmed.add(name)
                log.info("warm-up replica=%s decision=skip reason=in rotation before this "
                         "controller started", name)

    def track_warmups(self) -> None:
        """Start a burst for each replica that answers its probes but has not
        been warmed since it last came up; forget the warmth of one that fell."""
        for name in self.names:
            health = self.prober.states[name].health
            if not health.healthy:
                self.warmed.discard(name)
                task = self.warming.pop(name, None)
                if task is not None:
                    task.cancel()
            elif (self.warmup is not None and health.last_success is not None
                  and name not in self.warmed and name not in self.warming):
                log.info("warm-up replica=%s reason=healthy after a start requests=%d "
                         "max_tokens=%d", name, self.warmup.requests, self.warmup.max_tokens)
                self.metrics.warming.labels(replica=name).set(1)
                self.warming[name] = asyncio.create_task(self._warm(name))

    async def _warm(self, name: str) -> None:
        assert self.warmup is not None and self._warmup_client is not None
        result = await warm_up(self._warmup_client, self.urls[name], self.warmup)
        level = logging.INFO if not result.failed else logging.WARNING
        log.log(level, "warm-up done replica=%s decision=joins rotation %s", name,
                result.summary())
        self.metrics.warmup_seconds.labels(replica=name).set(result.seconds)
        self.metrics.warming.labels(replica=name).set(0)
        self.warmed.add(name)
        self.warmed_at[name] = self.clock()
        self.warming.pop(name, None)
        self._warmed_one.set()

    async def _after_warmups(self) -> None:
        # Decided here, in a task run() awaits, so a decision that raises
        # ends run() as any other does.
        while True:
            await self._warmed_one.wait()
            self._warmed_one.clear()
            await self.evaluate("warm-up")

    # --- the decision ------------------------------------------------------
    async def evaluate(self, trigger: str) -> DecisionRecord:
        async with self._lock:
            self.track_warmups()
            started = time.monotonic()
            now = self.clock()
            desired = decide(self.snapshot(now), self.desired, self.settings)
            self.desired = desired
            if not weights_differ(self.applied, desired):
                self.differing_since = None
            elif self.differing_since is None:
                self.differing_since = now
            apply, why = should_apply(self.applied, desired, self.last_weight_reload_at,
                                      self.settings, self.differing_since)
            self.metrics.decision_seconds.observe(time.monotonic() - started)
            error = None
            if apply:
                error = await self._apply(desired, why)
            self.metrics.change_pending.set(int(apply and error is not None))
            self.metrics.decisions.labels(applied=str(apply and error is None).lower()).inc()
            record = DecisionRecord(at=now, trigger=trigger, applied=apply and error is None,
                                    why=why, weights=desired.weights(),
                                    down=sorted(desired.down()), reasons=desired.reasons(),
                                    error=error)
            self.history.append(record)
            self._publish()
            return record

    async def _apply(self, desired: Decision, why: str) -> str | None:
        try:
            result = await self.actuator.apply(desired, why)
        except NginxReloadFailed as exc:
            kind = ("nginx_test_failed" if isinstance(exc, NginxTestFailed) else
                    "write_failed" if isinstance(exc, ConfigWriteFailed) else "reload_failed")
            self.metrics.reloads.labels(result=kind).inc()
            self._failures_in_a_row += 1
            now = time.monotonic()
            # A full disk fails every evaluation: log a change of reason at
            # once, the same reason once a minute, and count every attempt.
            if exc.message != self._last_failure or now - self._last_failure_logged >= 60:
                log.error("reload failed result=%s reason=%s; previous config kept, "
                          "retrying (%d failure(s) in a row)", kind, exc.message,
                          self._failures_in_a_row)
                self._last_failure, self._last_failure_logged = exc.message, now
            return exc.message
        if self._failures_in_a_row:
            log.info("reload recovered after %d failure(s) in a row", self._failures_in_a_row)
        self._failures_in_a_row, self._last_failure = 0, None
        # Any reload resets nginx's counters; the minimum interval spaces them all.
        self.last_weight_reload_at = desired.at
        self.applied = desired
        self.differing_since = None
        self.metrics.reloads.labels(result="success").inc()
        self.metrics.last_reload.set(self.clock())
        log.info("reload applied version=%s in %.3fs why=%s weights=%s down=%s",
                 result.version, result.seconds, why, desired.weights(),
                 sorted(desired.down()) or "-")
        return None

    def _publish(self) -> None:
        m = self.metrics
        applied = self.applied
        now = self.clock()
        snapshot = self.snapshot(now)
        signals = snapshot.signals
        for name in self.names:
            if self.desired is not None:
                m.desired_weight.labels(replica=name).set(self.desired.replicas[name].weight)
            if applied is not None:
                m.weight.labels(replica=name).set(applied.replicas[name].weight)
                m.in_rotation.labels(replica=name).set(0 if applied.replicas[name].down else 1)
            m.healthy.labels(replica=name).set(int(self.prober.states[name].health.healthy))
            sig = signals.get(name)
            ages = [s.age_s for s in (sig.running, sig.waiting) if s is not None] if sig else []
            m.signal_age.labels(replica=name).set(min(ages) if ages else math.inf)
            override = self.overrides.get(name, Override())
            m.override.labels(replica=name, kind="drain").set(int(override.drained))
            pace = snapshot.pace.get(name)
            if pace is not None:
                m.pace_ratio.labels(replica=name).set(pace.ratio)
                m.pace_seconds.labels(replica=name).set(pace.seconds_per_token)
            m.override.labels(replica=name, kind="pin").set(int(override.pin_active(now)))
            m.shedding.labels(replica=name).set(
                int(applied is not None and name in applied.shedding()))

    # --- admin actions -------------------------------------------------------
    async def set_override(self, name: str, **changes: Any) -> DecisionRecord:
        self.overrides[name] = replace(self.overrides.get(name, Override()), **changes)
        self._save_overrides()
        log.info("admin override replica=%s %s", name, changes)
        return await self.evaluate(f"admin: {name} {changes}")

    def _load_overrides(self) -> dict[str, Override]:
        if self.overrides_file is None or not self.overrides_file.exists():
            return {}
        try:
            raw = json.loads(self.overrides_file.read_text(encoding="utf-8"))
            return {name: Override(**fields) for name, fields in raw.items()
                    if name in self.names}
        except (ValueError, TypeError) as exc:
            log.error("ignoring unreadable overrides file %s: %s", self.overrides_file, exc)
            return {}

    def _save_overrides(self) -> None:
        if self.overrides_file is None:
            return
        try:
            write_atomic(self.overrides_file, json.dumps(
                {name: asdict(o) for name, o in self.overrides.items()}, indent=2) + "\n")
        except OSError as exc:
            # The override still acts; only a controller restart would forget it.
            log.error("cannot save overrides to %s: %s; they hold until the controller "
                      "restarts", self.overrides_file, exc.strerror or exc)

    # --- the loops ---------------------------------------------------------
    async def run(self) -> None:
        follow: list[asyncio.Task[None]] = []
        try:
            # Every input once, then the first decision, then each on its schedule.
            for source in self.inputs:
                await self._poll_safely(source)
            await self.evaluate("start")
            follow = [asyncio.create_task(self._follow(source)) for source in self.inputs]
            follow.append(asyncio.create_task(self._after_warmups()))
            await asyncio.gather(*follow)
        finally:
            for task in follow:
                task.cancel()
            for task in self.warming.values():
                task.cancel()
            if self._warmup_client is not None:
                await self._warmup_client.aclose()
            for source in self.inputs:
                await source.close()

    def status(self) -> FleetStatus:
        now = self.clock()
        snapshot = self.snapshot(now)
        last = self.history[-1] if self.history else None
        prometheus = self._input(PrometheusInput)
        admission = self._input(AdmissionInput)
        budgets = self._input(BudgetInput)
        return FleetStatus(
            replicas=[self._replica_status(member, snapshot, now) for member in self.members],
            prometheus=PrometheusView(ok=prometheus is not None and prometheus.ok,
                                      error=None if prometheus is None else prometheus.error,
                                      last_success=None if prometheus is None
                                      else prometheus.signals_at),
            pace_test=self._pace_test(), last_decision=last,
            admission=None if admission is None else admission.view(),
            budgets=None if budgets is None else budgets.view())

    def _replica_status(self, member: Member, snapshot: Snapshot, now: float) -> ReplicaStatus:
        probe = self.prober.states[member.name]
        applied = self.applied.replicas.get(member.name) if self.applied else None
        desired = self.desired.replicas.get(member.name) if self.desired else None
        signals = snapshot.signals.get(member.name, ReplicaSignals())
        override = self.overrides.get(member.name, Override())
        pace = snapshot.pace.get(member.name)
        room = snapshot.capacity.get(member.name)
        processes = self._input(ProcessWatch)
        pinned = override.pin_active(now)
        return ReplicaStatus(
            name=member.name, url=member.url, device=member.device,
            weight=applied.weight if applied else None,
            in_rotation=(not applied.down) if applied else None,
            desired_weight=desired.weight if desired else None,
            process=processes.states.get(member.name) if processes else None,
            reason=desired.reason if desired else None,
            shedding=applied.shed if applied else None,
            health=Health(healthy=probe.health.healthy,
                          consecutive_failures=probe.health.consecutive_failures,
                          last_success=probe.health.last_success, last_error=probe.last_error),
            signals={name: None if s is None else SignalReading(
                         value=s.value if math.isfinite(s.value) else None,
                         age_s=s.age_s if math.isfinite(s.age_s) else None)
                     for name in ReplicaSignals.__dataclass_fields__
                     for s in [getattr(signals, name)]},
            pace=None if pace is None else PaceView(
                ratio=pace.ratio, zone=pace.zone, deviation=pace.deviation,
                statistic=pace.statistic, threshold=pace.threshold, rounds=pace.rounds,
                moved_at=pace.moved_at, moved_on_rounds=pace.moved_on_rounds,
                seconds_per_token=pace.seconds_per_token, batch=pace.batch,
                age_s=max(0.0, now - pace.at)),
            capacity=None if room is None else CapacityView(
                ratio=room.ratio, evidence=room.evidence() or None,
                room=None if room.room is None else RoomView(
                    what=room.room.what, own=room.room.own, fleet=room.room.fleet,
                    source=room.room.source)),
            override=OverrideView(drained=override.drained,
                                  pinned_weight=override.pinned_weight if pinned else None,
                                  pin_expires_at=override.pin_expires_at if pinned else None))

    def _pace_test(self) -> PaceTestView | None:
        """The pace test's parameters as of the latest round: what a move needs."""
        pace = self._input(PaceInput)
        if pace is None or pace.prober.tracker.plan is None:
            return None
        plan, settings = pace.prober.tracker.plan, pace.prober.settings
        return PaceTestView(
            noise=plan.noise, k=plan.k, threshold=plan.h, cap=plan.cap,
            slope_per_sequence=pace.prober.tracker.slope,
            false_moves_per_hour=settings.false_moves_per_hour, deadband=settings.deadband,
            detection_rounds={f"{ratio:g}x": round(plan.delay_rounds(ratio, settings.min_rounds), 1)
                              for ratio in (1.5, 2.0, 3.0)})
