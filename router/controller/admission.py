"""Shedding from the fleet's saturation (spec priority.shed_queue_wait_s).

Every ``evaluate_interval_s`` the controller reads two fleet totals from
Prometheus: the requests waiting in the replicas' queues and the rate they
finish. Their ratio is how long a new request would wait before a replica
starts it. A class whose limit that wait passes is shed: the gateway answers
its new requests 503 at once, with a Retry-After of the time the queue needs
to drain to half the limit at the measured rate, instead of letting them
wait in a vLLM queue until their clients give up. A shed class is let back
in once the wait is below half its limit, so a queue hovering at a limit
does not open and close the gateway every round.

The state reaches nginx without a reload: one file per shed class in a
folder nginx tests on every request of that class (``ShedBoard``), the
Retry-After inside it. Stale or missing readings shed nothing: the gateway
fails open, as the weights hold on no data.

``assess`` is pure; ``ShedBoard`` writes files; ``AdmissionInput`` joins
them to Prometheus on the controller's schedule.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.controller.metrics import ControllerMetrics
from router.controller.policy import Snapshot
from router.disk.paths import write_atomic
from router.errors import MetricsUnavailable
from router.fleet_status import AdmissionView, ClassAdmission

log = logging.getLogger(__name__)

# A shed class comes back once the wait is below this share of its limit.
RELEASE_FRACTION = 0.5
# Retry-After stays within these seconds: at least one, so a client does
# not spin; at most a minute, so a stuck drain rate does not send clients
# away for an hour.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60
JOB = 'job="vllm"'
# The finish rate is read over this many seconds at least: short enough to
# follow a flood's start and end, long enough to smooth a batch's finish.
MIN_RATE_WINDOW_S = 20
WAITING_QUERY = f"sum by (replica) (vllm:num_requests_waiting{{{JOB}}})"


def queue_rate_window_s(scrape_interval_s: float) -> int:
    """The finish rate's window: four scrapes at least, so a missed one is no gap."""
    return max(MIN_RATE_WINDOW_S, math.ceil(4 * scrape_interval_s))


def finished_query(window: str) -> str:
    """Requests each replica finished per second over ``window``, aborted ones too:
    an abort frees a place in the queue as much as an answer does."""
    return f"sum by (replica) (rate(vllm:request_success_total{{{JOB}}}[{window}]))"


@dataclass(frozen=True)
class FleetQueue:
    """The fleet's queue as Prometheus last saw it."""

    waiting: float
    finished_per_s: float
    # Seconds since the oldest of the readings behind it.
    age_s: float

    @property
    def wait_s(self) -> float | None:
        """How long a new request waits before a replica starts it, about;
        None while requests wait and none finished in the window: a fleet
        that has just started on long requests has no drain rate yet, and a
        stalled one is the health probes' to take out, not a reason to shed."""
        if self.waiting <= 0:
            return 0.0
        if self.finished_per_s <= 0:
            return None
        return self.waiting / self.finished_per_s


@dataclass(frozen=True)
class ClassState:
    """One shedding class's verdict for this round."""

    name: str
    limit_s: float
    shed: bool
    # The Retry-After the gateway sends while the class is shed.
    retry_after_s: int
    reason: str


def retry_after(wait_s: float, limit_s: float) -> int:
    """Seconds until the queue's wait is below the release level, at today's drain."""
    needed = math.ceil(wait_s - limit_s * RELEASE_FRACTION)
    return max(MIN_RETRY_AFTER_S, min(MAX_RETRY_AFTER_S, needed))


def assess(queue: FleetQueue | None, limits: Mapping[str, float], shed_now: frozenset[str],
           max_age_s: float) -> dict[str, ClassState]:
    """Each limited class: shed or admitted, and why. ``shed_now``: the classes
    shed after the last round (they are let back in below the release level)."""
    states = {}
    for name, limit in limits.items():
        if queue is None or queue.age_s > max_age_s:
            states[name] = ClassState(name, limit, False, MIN_RETRY_AFTER_S,
                                      "no fresh queue reading: admit (fail open)")
            continue
        wait = queue.wait_s
        if wait is None:
            states[name] = ClassState(name, limit, False, MIN_RETRY_AFTER_S,
                                      f"{queue.waiting:g} waiting and none finished in the "
                                      "window: no drain rate to judge by; admit")
            continue
        release = limit * RELEASE_FRACTION
        shed = wait > limit or (name in shed_now and wait >= release)
        evidence = (f"queue wait {wait:.1f}s (waiting {queue.waiting:g}, finishing "
                    f"{queue.finished_per_s:.2f}/s)")
        if shed:
            reason = (f"{evidence} > limit {limit:g}s" if wait > limit else
                      f"{evidence} not yet below release {release:g}s")
        else:
            reason = (f"{evidence} <= limit {limit:g}s" if name not in shed_now else
                      f"{evidence} < release {release:g}s")
        states[name] = ClassState(name, limit, shed, retry_after(wait, limit), reason)
    return states


class ShedBoard:
    """The folder nginx tests for shed classes: a file per shed class, named as
    the class, holding the Retry-After the gateway answers with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def clear(self) -> None:
        """No class shed: at a start, so flags a stopped controller left never shed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for flag in self.folder.iterdir():
            if not flag.name.startswith("."):
                flag.unlink(missing_ok=True)

    def publish(self, states: Mapping[str, ClassState]) -> None:
        for name, state in states.items():
            flag = self.folder / name
            if state.shed:
                write_atomic(flag, json.dumps({"retry_after_s": state.retry_after_s,
                                               "reason": state.reason}) + "\n")
            else:
                flag.unlink(missing_ok=True)


class QueueSource(Protocol):
    """Per-replica instant queries (router.controller.signals.PrometheusClient)."""

    async def query(self, promql: str) -> dict[str, float]: ...

    async def close(self) -> None: ...


async def read_queue(source: QueueSource, window: str,
                     in_rotation: Sequence[str]) -> FleetQueue:
    """The queue of the replicas the gateway sends to; a drained or dead
    replica's queue is not one a new request would join."""
    waiting = await source.query(WAITING_QUERY)
    finished = await source.query(finished_query(window))
    members = set(in_rotation)
    return FleetQueue(
        waiting=sum(v for name, v in waiting.items() if name in members and math.isfinite(v)),
        finished_per_s=sum(v for name, v in finished.items()
                           if name in members and math.isfinite(v)),
        age_s=0.0)


class AdmissionInput:
    """Sheds classes from the fleet's saturation; asks for no weight decision."""

    name = "admission"

    def __init__(self, source: QueueSource, board: ShedBoard, limits: Mapping[str, float],
                 window: str, interval_s: float, clock: Callable[[], float],
                 metrics: ControllerMetrics | None = None) -> None:
        self.source = source
        self.board = board
        self.limits = dict(limits)
        self.window = window
        self._interval_s = interval_s
        self.clock = clock
        self.metrics = metrics
        self.queue: FleetQueue | None = None
        self.queue_at: float | None = None
        self.states: dict[str, ClassState] = {}
        self.error: str | None = None
        try:
            self.board.clear()
        except OSError as exc:
            log.error("admission decision=hold reason=cannot clear the shed flags in %s: %s",
                      board.folder, exc.strerror or exc)

    @property
    def interval_s(self) -> float:
        return self._interval_s

    @property
    def shed(self) -> frozenset[str]:
        return frozenset(name for name, state in self.states.items() if state.shed)

    async def poll(self, in_rotation: Sequence[str]) -> bool:
        now = self.clock()
        try:
            self.queue = await read_queue(self.source, self.window, in_rotation)
            self.queue_at, self.error = now, None
        except MetricsUnavailable as exc:
            self.error = exc.message
        queue = None if self.queue is None or self.queue_at is None else FleetQueue(
            self.queue.waiting, self.queue.finished_per_s, now - self.queue_at)
        # Three rounds without a reading: the queue may have drained unseen.
        states = assess(queue, self.limits, self.shed, max_age_s=3 * self._interval_s)
        for name, state in states.items():
            if state.shed != (name in self.shed):
                log.info("admission class=%s decision=%s reason=%s retry_after=%ds", name,
                         "shed" if state.shed else "admit", state.reason,
                         state.retry_after_s)
        try:
            self.board.publish(states)
        except OSError as exc:
            # The flags stay as they were; the next round tries again.
            log.error("admission decision=hold reason=cannot write the shed flags in %s: %s",
                      self.board.folder, exc.strerror or exc)
            return False
        self.states = states
        if self.metrics is not None:
            for name, state in states.items():
                self.metrics.class_shed.labels(priority_class=name).set(int(state.shed))
            if queue is not None and queue.wait_s is not None:
                self.metrics.queue_wait.set(queue.wait_s)
        return False

    def view(self) -> AdmissionView:
        queue = self.queue
        wait = None if queue is None else queue.wait_s
        return AdmissionView(
            queue_wait_s=None if wait is None else round(wait, 2),
            waiting=None if queue is None else queue.waiting,
            finished_per_s=None if queue is None else round(queue.finished_per_s, 3),
            error=self.error,
            classes=[ClassAdmission(name=s.name, limit_s=s.limit_s, shed=s.shed,
                                    retry_after_s=s.retry_after_s, reason=s.reason)
                     for s in self.states.values()])

    def observe(self, snapshot: Snapshot) -> Snapshot:
        return snapshot

    async def close(self) -> None:
        await self.source.close()
