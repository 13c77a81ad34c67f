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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from router.config.spec import FAIR_SHARE_FILE, IN_FLIGHT_LEVELS
from router.controller.metrics import ControllerMetrics
from router.controller.policy import Snapshot
from router.controller.signals import JOB, RUNNING_QUERY, WAITING_QUERY
from router.disk.paths import write_atomic
from router.errors import MetricsUnavailable
from router.fleet_status import AdmissionView, ClassAdmission, FairShareView

log = logging.getLogger(__name__)

# A shed class comes back once the wait is below this share of its limit.
RELEASE_FRACTION = 0.5
# Retry-After stays within these seconds: at least one, so a client does
# not spin; at most a minute, so a stuck drain rate does not send clients
# away for an hour.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60
# A key is in use when the gateway logged a request of it this recently.
KEYS_IN_USE_WINDOW = "30s"
KEYS_IN_USE_QUERY = ("count(sum by (key) (rate(fleet_gateway_key_requests_total"
                     f'{{job="gateway_log"}}[{KEYS_IN_USE_WINDOW}])) > 0)')
# The finish rate is read over this many seconds at least: short enough to
# follow a flood's start and end, long enough to smooth a batch's finish.
MIN_RATE_WINDOW_S = 20
# Fair shares apply once the slots in rotation are all taken, and are lifted
# once the requests in flight are below this share of them.
FAIR_RELEASE_OCCUPANCY = 0.75


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
    running: float = 0.0

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


@dataclass(frozen=True)
class Verdict:
    """Whether the fleet is past one limit on its queue wait, and why."""

    over: bool
    reason: str
    wait_s: float | None = None


def saturated(queue: FleetQueue | None, limit: float, was_over: bool,
              max_age_s: float) -> Verdict:
    """Past ``limit`` seconds of queue wait; once past, until below half of it."""
    if queue is None or queue.age_s > max_age_s:
        return Verdict(False, "no fresh queue reading: admit (fail open)")
    wait = queue.wait_s
    if wait is None:
        return Verdict(False, f"{queue.waiting:g} waiting and none finished in the window: "
                              "no drain rate to judge by; admit")
    release = limit * RELEASE_FRACTION
    over = wait > limit or (was_over and wait >= release)
    evidence = (f"queue wait {wait:.1f}s (waiting {queue.waiting:g}, finishing "
                f"{queue.finished_per_s:.2f}/s)")
    if over:
        reason = (f"{evidence} > limit {limit:g}s" if wait > limit else
                  f"{evidence} not yet below release {release:g}s")
    else:
        reason = (f"{evidence} <= limit {limit:g}s" if not was_over else
                  f"{evidence} < release {release:g}s")
    return Verdict(over, reason, wait)


def assess(queue: FleetQueue | None, limits: Mapping[str, float], shed_now: frozenset[str],
           max_age_s: float) -> dict[str, ClassState]:
    """Each limited class: shed or admitted, and why. ``shed_now``: the classes
    shed after the last round (they are let back in below the release level)."""
    states = {}
    for name, limit in limits.items():
        verdict = saturated(queue, limit, name in shed_now, max_age_s)
        seconds = (MIN_RETRY_AFTER_S if verdict.wait_s is None
                   else retry_after(verdict.wait_s, limit))
        states[name] = ClassState(name, limit, verdict.over, seconds, verdict.reason)
    return states


@dataclass(frozen=True)
class FairShare:
    """Requests each API key may hold in flight, while the fleet is saturated."""

    # The cap per key nginx enforces now; None: no cap.
    per_key: int | None
    keys: int | None
    slots: int
    reason: str


def fair_share_level(slots: int, keys: int) -> int | None:
    """Each of ``keys`` keys' share of ``slots``, snapped down to a level nginx
    has a zone for; None for fewer than two keys (nobody to be fair to)."""
    if keys < 2:
        return None
    share = max(1, slots // keys)
    return max(level for level in IN_FLIGHT_LEVELS if level <= share)


def assess_fair_share(queue: FleetQueue | None, was_capped: bool, keys: int | None,
                      slots: int, max_age_s: float) -> FairShare:
    """Caps on once every slot in rotation is taken (running and waiting at
    least the slots); off once the requests in flight are below
    FAIR_RELEASE_OCCUPANCY of what the caps let in. The occupancy, not the
    queue wait, decides: capped keys that hold their shares leave no queue,
    and must stay capped while they do."""
    if queue is None or queue.age_s > max_age_s:
        return FairShare(None, keys, slots, "no fresh reading: no cap (fail open)")
    if slots <= 0:
        return FairShare(None, keys, slots,
                         "the replicas' slots (max_num_seqs) are unknown: no cap")
    level = None if keys is None else fair_share_level(slots, keys)
    held = queue.running + queue.waiting
    evidence = f"{held:g} requests running and waiting on {slots} slots"
    if level is None:
        return FairShare(None, keys, slots,
                         f"{evidence}; {'no count of' if keys is None else keys} key(s) in "
                         "use: no cap")
    assert keys is not None
    # What the caps let in: the shares are snapped down, so maybe not every slot.
    allowed = min(slots, level * keys)
    if held >= slots or (was_capped and held >= FAIR_RELEASE_OCCUPANCY * allowed):
        return FairShare(level, keys, slots, f"{evidence} over {keys} keys in use")
    return FairShare(None, keys, slots, evidence + (
        f": below {FAIR_RELEASE_OCCUPANCY:.0%} of the {allowed} the shares let in"
        if was_capped else ": not full") + "; no cap")


class ShedBoard:
    """The folder nginx tests for shed classes: a file per shed class, named as
    the class, holding the Retry-After the gateway answers with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def clear(self) -> None:
        """No class shed: at a start, so flags a stopped controller left never shed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for flag in self.folder.iterdir():
            # Folders hold other flags (the budget ledger's).
            if flag.is_file() and not flag.name.startswith("."):
                flag.unlink(missing_ok=True)

    def publish(self, states: Mapping[str, ClassState]) -> None:
        for name, state in states.items():
            self._put(name, json.dumps({"retry_after_s": state.retry_after_s,
                                        "reason": state.reason}) + "\n"
                      if state.shed else None)

    def publish_share(self, share: FairShare) -> None:
        """The cap per key, as nginx reads it (priority.js fairShare)."""
        self._put(FAIR_SHARE_FILE, None if share.per_key is None else f"{share.per_key}\n")

    def _put(self, name: str, text: str | None) -> None:
        """The flag ``name`` holds ``text``, or is gone for None. Written only
        when its text changes: every round would fsync the same bytes."""
        flag = self.folder / name
        if text is None:
            flag.unlink(missing_ok=True)
            return
        try:
            if flag.read_text(encoding="utf-8") == text:
                return
        except FileNotFoundError:
            pass
        write_atomic(flag, text)


class QueueSource(Protocol):
    """Instant queries (router.controller.signals.PrometheusClient)."""

    async def query(self, promql: str) -> dict[str, float]:
        """Per replica."""
        ...

    async def query_total(self, promql: str) -> float | None:
        """One number; None when the answer is empty."""
        ...

    async def close(self) -> None: ...


async def read_queue(source: QueueSource, window: str,
                     in_rotation: Sequence[str]) -> FleetQueue:
    """The queue of the replicas the gateway sends to; a drained or dead
    replica's queue is not one a new request would join."""
    waiting = await source.query(WAITING_QUERY)
    finished = await source.query(finished_query(window))
    running = await source.query(RUNNING_QUERY)
    members = set(in_rotation)

    def total(values: dict[str, float]) -> float:
        return sum(v for name, v in values.items() if name in members and math.isfinite(v))

    return FleetQueue(waiting=total(waiting), finished_per_s=total(finished), age_s=0.0,
                      running=total(running))


class AdmissionInput:
    """Sheds classes and caps keys at their fair share from the fleet's
    saturation; asks for no weight decision."""

    name = "admission"

    def __init__(self, source: QueueSource, board: ShedBoard, limits: Mapping[str, float],
                 window: str, interval_s: float, clock: Callable[[], float],
                 metrics: ControllerMetrics | None = None,
                 fair_slots: Mapping[str, int] | None = None) -> None:
        """``fair_slots``: each replica's slots (max_num_seqs) when
        priority.fair_share is on, else None."""
        self.source = source
        self.board = board
        self.limits = dict(limits)
        self.window = window
        self._interval_s = interval_s
        self.clock = clock
        self.metrics = metrics
        self.fair_slots = fair_slots
        self.queue: FleetQueue | None = None
        self.queue_at: float | None = None
        self.keys_in_use: int | None = None
        self.states: dict[str, ClassState] = {}
        self.share: FairShare | None = None
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

    async def _read(self, in_rotation: Sequence[str], now: float) -> None:
        try:
            self.queue = await read_queue(self.source, self.window, in_rotation)
            if self.fair_slots is not None:
                self.keys_in_use = int(await self.source.query_total(KEYS_IN_USE_QUERY) or 0)
            self.queue_at, self.error = now, None
        except MetricsUnavailable as exc:
            self.error = exc.message

    async def poll(self, in_rotation: Sequence[str]) -> bool:
        now = self.clock()
        await self._read(in_rotation, now)
        queue = None if self.queue is None or self.queue_at is None else replace(
            self.queue, age_s=now - self.queue_at)
        # Three rounds without a reading: the queue may have drained unseen.
        max_age_s = 3 * self._interval_s
        states = assess(queue, self.limits, self.shed, max_age_s)
        for name, state in states.items():
            if state.shed != (name in self.shed):
                log.info("admission class=%s decision=%s reason=%s retry_after=%ds", name,
                         "shed" if state.shed else "admit", state.reason,
                         state.retry_after_s)
        share = None
        if self.fair_slots is not None:
            slots = sum(self.fair_slots.get(name, 0) for name in in_rotation)
            was = self.share is not None and self.share.per_key is not None
            share = assess_fair_share(queue, was, self.keys_in_use, slots, max_age_s)
            if share.per_key != (None if self.share is None else self.share.per_key):
                log.info("admission fair_share decision=%s reason=%s",
                         "no cap" if share.per_key is None
                         else f"{share.per_key} in flight per key", share.reason)
        try:
            self.board.publish(states)
            if share is not None:
                self.board.publish_share(share)
        except OSError as exc:
            # The flags stay as they were; the next round tries again.
            log.error("admission decision=hold reason=cannot write the shed flags in %s: %s",
                      self.board.folder, exc.strerror or exc)
            return False
        self.states, self.share = states, share
        self._export(queue)
        return False

    def _export(self, queue: FleetQueue | None) -> None:
        if self.metrics is None:
            return
        for name, state in self.states.items():
            self.metrics.class_shed.labels(priority_class=name).set(int(state.shed))
        if queue is not None and queue.wait_s is not None:
            self.metrics.queue_wait.set(queue.wait_s)
        if self.share is not None:
            self.metrics.fair_share.set(self.share.per_key or 0)

    def view(self) -> AdmissionView:
        queue = self.queue
        wait = None if queue is None else queue.wait_s
        share = self.share
        return AdmissionView(
            queue_wait_s=None if wait is None else round(wait, 2),
            waiting=None if queue is None else queue.waiting,
            finished_per_s=None if queue is None else round(queue.finished_per_s, 3),
            error=self.error,
            classes=[ClassAdmission(name=s.name, limit_s=s.limit_s, shed=s.shed,
                                    retry_after_s=s.retry_after_s, reason=s.reason)
                     for s in self.states.values()],
            fair_share=None if share is None else FairShareView(
                per_key=share.per_key, keys_in_use=share.keys, slots=share.slots,
                reason=share.reason))

    def observe(self, snapshot: Snapshot) -> Snapshot:
        return snapshot

    async def close(self) -> None:
        await self.source.close()
