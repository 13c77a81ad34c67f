"""The weight policy: signals in, nginx weights and the down set out. Pure.

``decide(snapshot, previous, settings)`` has no I/O and no clock of its own:
the snapshot carries the time. ``should_apply`` is the hysteresis that
decides whether a decision is worth an nginx reload.

For each replica r, in order (the first rule that applies wins for `down`):

1. **Drained by an admin** -> ``down``. An admin's word beats any signal.
2. **Failing its health probes** (``fail_threshold`` consecutive failures of
   the controller's own probes, twice a second) -> ``down`` at once. Prometheus is far
   too slow to detect a dead replica; the probes are not. A healthy replica
   still **warming up** (its first burst after a start) stays ``down`` too,
   and its latency is not read while the burst is inside the latency window.
3. **Weight** from the replica's speed against the fleet's, never from its
   load: balancing load (in-flight requests) is least_conn's job, and a
   weight that follows a queue or KV gauge fights it.

       ratio_r  = the pace probes' verdict while they run and are fresh
                  (router.controller.pace: seconds per token at equal
                  batch over the fleet's, moved only when a CUSUM with a
                  stated false-alarm rate finds a real difference; 1 when
                  even); with the probes off, the P99 ratio
                  max(p99_ttft_r / median(p99_ttft), p99_e2e_r / median(p99_e2e))
                  clamped to [1/max_latency_ratio, max_latency_ratio]
       room_r   = its admission limit seen while requests waited over the
                  others' (router.controller.capacity), at most 1; 1 within
                  the deadband or before it ever ran out of room
       raw_r    = BASE_WEIGHT * room_r / ratio_r
       target_r = raw_r (pace); previous_target_r + smoothing * (raw_r -
                  previous_target_r) (P99s, which are noisy)

   - Relative to the fleet, not absolute: a long prompt mix slows every
     replica alike and must not move weights; one replica at three times
     the fleet (thermal throttling, a noisy neighbour) gets a third.
   - The pace verdict holds still between alarms of its test, so an equal
     fleet keeps equal weights; its first decision after an alarm is
     urgent (applied past the reload interval, see ``should_apply``), as
     is the first that finds a replica an outlier (below).
   - **Outliers**: a replica at ``outlier_latency_ratio`` times the median
     or more on its pace, or on *both* P99 TTFT and P99 E2E, gets raw weight 1 instead, while
     the fleet's median pressure (KV usage plus waiting/running) is below
     ``outlier_max_pressure``. Weighted least_conn gives a replica a share
     of about weight / latency ratio, and any share above 1 % puts its
     latency into the fleet's P99; a trickle still keeps it measured, so it
     returns once it is fast again. A busy fleet keeps the proportional
     weight instead: it needs the capacity.
   - **No data is not zero.** A NaN, missing or stale sample (older than
     ``max_signal_age_s``, or ``pace.max_age_s`` for a pace reading) gives
     no ratio: the replica keeps its previous target ("hold"). Stale data
     never reads as fast, nor as saturated.
4. **Slow start**: a replica back in rotation ramps linearly from weight 1
   to its target over ``slow_start_s`` (open-source nginx has no
   slow_start), so it is not flooded while its caches are cold.
5. **Pinned by an admin** -> that weight, until the pin expires.
6. Weights are integers in [1, 100]: nginx rejects weight=0; draining is
   `down`.
7. **Never all down**: if every replica would be out, the least bad one (the
   most recent successful probe) stays in rotation, and the same one for as
   long as it stays a candidate. Failing open serves some clients; failing
   closed serves none.
8. **Crash loops** (the supervisor's account) -> ``down``, whatever the
   probes say; **affinity load bound**: with gateway.affinity on, a replica
   whose pressure is well above the fleet's median spills its keyed
   requests to least_conn (it keeps its keys).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from router.config.spec import ControllerSpec
from router.controller.capacity import CapacitySignal
from router.upstream import BASE_WEIGHT, MAX_WEIGHT, MIN_WEIGHT, clamp_weight

# How long an admin's pin lasts when no duration is given.
DEFAULT_PIN_TTL_S = 600.0
# An outlier is released below outlier_latency_ratio ** this (1.22x for 1.5x).
OUTLIER_RELEASE_EXPONENT = 0.5


@dataclass(frozen=True)
class Sample:
    """One signal value and how old it is."""

    value: float
    age_s: float

    def usable(self, max_age_s: float) -> bool:
        return math.isfinite(self.value) and 0 <= self.age_s <= max_age_s


@dataclass(frozen=True)
class ReplicaSignals:
    """What Prometheus says about one replica; None where it says nothing."""

    ttft_p99: Sample | None = None
    e2e_p99: Sample | None = None
    waiting: Sample | None = None
    running: Sample | None = None
    kv_usage: Sample | None = None
    gpu_util: Sample | None = None
    gpu_memory_used: Sample | None = None  # fraction of the GPU's memory in use
    up: Sample | None = None
    # Share of prompt tokens found in the prefix cache (vLLM's counters).
    prefix_hit_rate: Sample | None = None


@dataclass(frozen=True)
class Health:
    """The active prober's view of one replica."""

    healthy: bool = True
    # When it last came back into rotation (None: it never left).
    recovered_at: float | None = None
    consecutive_failures: int = 0
    last_success: float | None = None


@dataclass(frozen=True)
class Override:
    """An admin's instruction for one replica."""

    drained: bool = False
    pinned_weight: int | None = None
    pin_expires_at: float | None = None

    def pin_active(self, now: float) -> bool:
        return self.pinned_weight is not None and (
            self.pin_expires_at is None or now < self.pin_expires_at)


@dataclass(frozen=True)
class PaceSignal:
    """A replica's speed against the fleet's at equal load, from the pace
    probes and their sequential test (router.controller.pace)."""

    # The speed ratio its weight follows (its seconds per token over the
    # fleet's at equal batch, as last set by an alarm of the test; 1 = even).
    ratio: float
    zone: str  # "slow", "even" or "fast": the ratio's side of 1
    # The latest round's reading at equal batch over the fleet's median.
    deviation: float
    # The CUSUM's larger sum, the threshold it alarms at (both in log seconds
    # per token) and the rounds that sum has been building.
    statistic: float
    threshold: float
    rounds: int
    # When the ratio last moved and how many rounds that move rested on.
    moved_at: float | None
    moved_on_rounds: int
    # The latest probe: seconds per output token, the batch it ran in, when.
    seconds_per_token: float
    batch: float | None
    at: float

    def fresh(self, now: float, max_age_s: float) -> bool:
        return 0 <= now - self.at <= max_age_s

    @property
    def just_moved(self) -> bool:
        """This round's alarm moved the ratio: news, like a health flip."""
        return self.moved_at is not None and self.moved_at == self.at

    def evidence(self) -> str:
        """The statistic, the samples behind it and the threshold, in words."""
        batch = "" if self.batch is None else f", batch {self.batch:g}"
        if self.just_moved:
            test = (f"moved now: CUSUM reached h {self.threshold:.3f} "
                    f"on {self.moved_on_rounds} rounds")
        else:
            test = (f"CUSUM {self.statistic:.3f} of h {self.threshold:.3f} "
                    f"over {self.rounds} round{'s' if self.rounds != 1 else ''}")
        return (f"pace {self.ratio:.2f}x fleet at equal batch ({self.zone}; "
                f"this round {self.deviation:.2f}x{batch}; {test})")


@dataclass(frozen=True)
class Snapshot:
    """Everything the policy looks at, at one instant."""

    now: float
    replicas: tuple[str, ...]
    signals: Mapping[str, ReplicaSignals] = field(default_factory=dict)
    health: Mapping[str, Health] = field(default_factory=dict)
    overrides: Mapping[str, Override] = field(default_factory=dict)
    # Replicas being sent their warm-up burst (router.controller.warmup).
    warming: frozenset[str] = frozenset()
    # Replicas whose latency histograms still hold their warm-up burst: its
    # first batch pays the kernels' compile, so their P99 says nothing yet.
    latency_blind: frozenset[str] = frozenset()
    # Pace probe signals, per replica (router.controller.pace).
    pace: Mapping[str, PaceSignal] = field(default_factory=dict)
    # The pace probes run: they alone move weights, and the P99s only feed
    # alerts and dashboards (they read load as slowness).
    pacing: bool = False
    # Each replica's room against the fleet's, from the same rounds
    # (router.controller.capacity).
    capacity: Mapping[str, CapacitySignal] = field(default_factory=dict)
    # Replicas whose process crash-loops, and the supervisor's account of
    # it (router.controller.processes): out whatever a probe says.
    crash_looping: Mapping[str, str] = field(default_factory=dict)
    # The gateway routes keyed requests by their key (gateway.affinity), so
    # the load bound applies.
    affinity: bool = False


@dataclass(frozen=True)
class ReplicaDecision:
    weight: int
    down: bool
    target: float  # the smoothed, unrounded target: the next decision starts here
    reason: str
    # The weight is an admin's pin, not the policy's.
    pinned: bool = False
    # Strong evidence just arrived: a weight change applies past the reload interval.
    urgent: bool = False
    # The outlier rule set its weight to the minimum.
    outlier: bool = False
    # Why its keyed requests spill to least_conn (the affinity load bound), or None.
    shed: str | None = None
    # Kept in rotation by the fail-open rule although it is out.
    fail_open: bool = False


@dataclass(frozen=True)
class Decision:
    at: float
    replicas: Mapping[str, ReplicaDecision]

    def weights(self) -> dict[str, int]:
        return {name: d.weight for name, d in self.replicas.items()}

    def down(self) -> frozenset[str]:
        return frozenset(name for name, d in self.replicas.items() if d.down)

    def reasons(self) -> dict[str, str]:
        return {name: d.reason for name, d in self.replicas.items()}

    def shedding(self) -> dict[str, str]:
        return {name: d.shed for name, d in self.replicas.items() if d.shed and not d.down}


def _median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fresh(sample: Sample | None, max_age_s: float) -> float | None:
    return sample.value if sample is not None and sample.usable(max_age_s) else None


def _pressure(signals: ReplicaSignals, max_age_s: float) -> float | None:
    kv = _fresh(signals.kv_usage, max_age_s)
    waiting = _fresh(signals.waiting, max_age_s)
    running = _fresh(signals.running, max_age_s)
    if kv is None and waiting is None:
        return None
    queue = min(1.0, (waiting or 0.0) / max(1.0, running or 0.0))
    return (kv or 0.0) + queue


def _outlier(ratios: list[float], needed: int, median_pressure: float | None,
             settings: ControllerSpec, was_outlier: bool) -> str | None:
    """Why a replica is a latency outlier, or None. From Prometheus both
    latencies must be slow (``needed`` 2), so one histogram's coarse buckets
    cannot make an outlier alone; the pace is one exact reading.

    An outlier stays one until its ratio falls below the release ratio, half
    way (in log) from even to the limit: a replica slowed to about the limit
    reads a little above it one round and a little below the next, and
    without this its weight jumped between the minimum and BASE / limit with
    a reload each time (seen on an H100: 36, 1, 33, 1 within 20 s)."""
    limit = settings.outlier_latency_ratio
    if limit and was_outlier:
        limit = limit ** OUTLIER_RELEASE_EXPONENT
    if not limit or len(ratios) < needed or min(ratios) < limit:
        return None
    if median_pressure is None or median_pressure >= settings.outlier_max_pressure:
        return None
    which = "on both" if needed > 1 else "in pace"
    return (f"outlier (>= {limit:g}x median {which}; fleet pressure {median_pressure:.2f}): "
            "minimum weight")


@dataclass(frozen=True)
class _Latency:
    """A replica's latency against the fleet's, and how sure we are of it."""

    ratios: list[float]
    terms: list[str]
    # Ratios at the outlier limit it takes to make an outlier.
    outlier_needs: int = 2
    # The ratio is the sequential test's verdict, not a noisy reading: the
    # target follows it in one step.
    strong: bool = False
    urgent: bool = False


def _latency(replica: str, snapshot: Snapshot, signals: ReplicaSignals,
             medians: Mapping[str, float | None], in_rotation: int,
             settings: ControllerSpec) -> _Latency:
    if in_rotation < 2:
        return _Latency([], [])
    if snapshot.pacing:
        pace = snapshot.pace.get(replica)
        if pace is None or not pace.fresh(snapshot.now, settings.pace.max_age_s):
            return _Latency([], [])
        return _Latency([pace.ratio], [pace.evidence()], outlier_needs=1, strong=True,
                        urgent=pace.just_moved)
    if replica in snapshot.latency_blind:
        return _Latency([], ["latency not read: its warm-up is inside the latency window"])
    ratios, terms = [], []
    for metric, label in (("ttft_p99", "p99 TTFT"), ("e2e_p99", "p99 E2E")):
        value = _fresh(getattr(signals, metric), settings.max_signal_age_s)
        median = medians[metric]
        if value is not None and median is not None and median > 0:
            ratios.append(value / median)
            terms.append(f"{label} {value / median:.2f}x median")
    return _Latency(ratios, terms)


def decide(snapshot: Snapshot, previous: Decision | None, settings: ControllerSpec) -> Decision:
    """Weights, down set and a reason for every replica; see the module docstring."""
    now, max_age = snapshot.now, settings.max_signal_age_s
    health = {r: snapshot.health.get(r, Health()) for r in snapshot.replicas}
    overrides = {r: snapshot.overrides.get(r, Override()) for r in snapshot.replicas}
    signals = {r: snapshot.signals.get(r, ReplicaSignals()) for r in snapshot.replicas}
    in_rotation = [r for r in snapshot.replicas if health[r].healthy
                   and not overrides[r].drained and r not in snapshot.warming
                   and r not in snapshot.crash_looping]

    medians = {
        metric: _median_of([v for r in in_rotation if r not in snapshot.latency_blind
                            and (v := _fresh(getattr(signals[r], metric), max_age)) is not None])
        for metric in ("ttft_p99", "e2e_p99")
    }
    # Pressure (KV cache and queue) is load, and balancing load is least_conn's
    # job: it never sets a weight. The fleet's median gates the outlier rule
    # (a busy fleet needs every replica) and drives the affinity load bound.
    pressures = {r: _pressure(signals[r], max_age) for r in snapshot.replicas}
    median_pressure = _median_of([p for r in in_rotation if (p := pressures[r]) is not None])

    decisions: dict[str, ReplicaDecision] = {}
    for r in snapshot.replicas:
        before = previous.replicas.get(r) if previous else None
        prev_target = before.target if before else float(BASE_WEIGHT)
        if overrides[r].drained:
            decisions[r] = ReplicaDecision(clamp_weight(prev_target), True, prev_target,
                                           "drained by admin")
            continue
        if r in snapshot.crash_looping:
            decisions[r] = ReplicaDecision(clamp_weight(prev_target), True, prev_target,
                                           f"out: {snapshot.crash_looping[r]}")
            continue
        if not health[r].healthy:
            decisions[r] = ReplicaDecision(
                clamp_weight(prev_target), True, prev_target,
                f"out: {health[r].consecutive_failures} failed health probes in a row")
            continue
        if r in snapshot.warming:
            decisions[r] = ReplicaDecision(
                clamp_weight(prev_target), True, prev_target,
                "warming up: healthy, taking its warm-up burst before it joins")
            continue

        latency = _latency(r, snapshot, signals[r], medians, len(in_rotation), settings)
        ratios, terms = latency.ratios, list(latency.terms)
        outlier = _outlier(ratios, latency.outlier_needs, median_pressure, settings,
                           was_outlier=bool(before and before.outlier))
        if outlier:
            terms.append(outlier)
        room = snapshot.capacity.get(r)
        room_share = room.ratio if room is not None and snapshot.pacing else 1.0
        if room_share < 1 and room is not None:
            terms.append(room.evidence())
        if ratios:
            ratio = min(max(max(ratios), 1 / settings.max_latency_ratio),
                        settings.max_latency_ratio)
            raw = MIN_WEIGHT if outlier else BASE_WEIGHT * room_share / ratio
            # Bounded like the weight, so a target cannot wind up past what
            # nginx can be given and then lag on its way back.
            step = 1.0 if latency.strong else settings.smoothing
            target = min(float(MAX_WEIGHT), max(float(MIN_WEIGHT),
                                                prev_target + step * (raw - prev_target)))
            reason = ", ".join(terms) + f"; target {target:.1f}"
        else:
            target = prev_target
            hold = ("holding: no fresh pace reading" if snapshot.pacing
                    else "holding: no fresh signals")
            reason = "; ".join([*terms, hold])

        effective = target
        recovered = health[r].recovered_at
        if recovered is not None and settings.slow_start_s > 0:
            ramp = (now - recovered) / settings.slow_start_s
            if ramp < 1:
                effective = max(MIN_WEIGHT, target * max(ramp, 0.0))
                reason += f"; slow start {ramp:.0%}"
        override = overrides[r]
        pinned = override.pin_active(now)
        if pinned:
            assert override.pinned_weight is not None
            effective = override.pinned_weight
            reason = f"pinned by admin to {override.pinned_weight}"
        weight = clamp_weight(effective)
        # An outlier found on strong evidence is news even in a long streak:
        # the pressure that held the rule back may have only just dropped.
        newly_outlier = bool(outlier) and latency.strong and not (before and before.outlier)
        decisions[r] = ReplicaDecision(weight, False, target, reason, pinned,
                                       urgent=(latency.urgent or newly_outlier) and not pinned,
                                       outlier=bool(outlier))

    if snapshot.affinity:
        decisions = _bound_affinity(decisions, pressures, median_pressure, previous, settings)
    if snapshot.replicas and all(d.down for d in decisions.values()):
        candidates = [r for r in snapshot.replicas if not overrides[r].drained] or list(
            snapshot.replicas)
        kept_before = [r for r in candidates if previous is not None and r in previous.replicas
                       and previous.replicas[r].fail_open]
        # The one kept stays the same one while it is still a candidate: a
        # new pick each evaluation is a reload each, and a status that
        # disagrees with nginx about who serves.
        least_bad = kept_before[0] if kept_before else max(
            candidates, key=lambda r: (health[r].last_success or float("-inf"),
                                       -health[r].consecutive_failures))
        kept = decisions[least_bad]
        decisions[least_bad] = ReplicaDecision(
            kept.weight, False, kept.target,
            "fail open: every replica is out, so the least bad one stays in rotation "
            f"({kept.reason})", kept.pinned, outlier=kept.outlier, fail_open=True)
    return Decision(at=now, replicas=decisions)


def _bound_affinity(decisions: dict[str, ReplicaDecision], pressures: Mapping[str, float | None],
                    median: float | None, previous: Decision | None,
                    settings: ControllerSpec) -> dict[str, ReplicaDecision]:
    """Mark the replicas whose pressure is well above the fleet's median as
    spilling its keyed traffic (shed_above to start, resume_below to stop).
    Being above the median, at most half of those in rotation ever shed."""
    serving = [r for r, d in decisions.items() if not d.down]
    if median is None or len(serving) < 2:
        return decisions
    over: dict[str, float] = {}
    for r in serving:
        pressure = pressures.get(r)
        was = previous is not None and r in previous.replicas and previous.replicas[r].shed
        if pressure is not None and pressure - median > (
                settings.resume_below if was else settings.shed_above):
            over[r] = pressure
    bounded = dict(decisions)
    for r in over:
        why = (f"pressure {over[r]:.2f} against the fleet's median {median:.2f} "
               f"(sheds above +{settings.shed_above:g}, resumes below "
               f"+{settings.resume_below:g})")
        d = decisions[r]
        bounded[r] = replace(d, shed=why,
                             reason=f"{d.reason}; its keyed requests spill to least_conn: {why}")
    return bounded


def weights_differ(applied: Decision | None, desired: Decision) -> bool:
    """Whether any replica in rotation runs another weight than its target."""
    if applied is None:
        return True
    return any(not new.down and (old := applied.replicas.get(name)) is not None
               and old.weight != new.weight for name, new in desired.replicas.items())


def should_apply(applied: Decision | None, desired: Decision, last_weight_reload_at: float | None,
                 settings: ControllerSpec, differing_since: float | None = None
                 ) -> tuple[bool, str]:
    """Whether ``desired`` is worth a reload now, and why (hysteresis).

    Health and admin changes apply at once, and so does the first weight
    move on strong pace evidence; weight drift only when some weight moves
    by at least ``min_weight_change`` and the last weight reload is at
    least ``min_reload_interval_s`` old. The change is measured as the log
    of the ratio, so 50 -> 61 and 61 -> 50 pass or fail alike; and weights
    that have differed from their targets since ``differing_since`` for
    ``max_weight_lag_s`` apply whatever their size, so none strands. Each
    reload resets nginx's least_conn counts and fail counters and forks a
    worker generation, so it is not free.
    """
    if applied is None:
        return True, "first configuration"
    if desired.down() != applied.down():
        came = sorted(applied.down() - desired.down())
        went = sorted(desired.down() - applied.down())
        parts = ([f"out: {', '.join(went)}"] if went else []) + (
            [f"back: {', '.join(came)}"] if came else [])
        return True, "rotation change (" + "; ".join(parts) + ")"
    started = sorted(set(desired.shedding()) - set(applied.shedding()))
    if started:
        # Relief for an overloaded replica cannot wait for the interval.
        return True, f"load bound: {', '.join(started)} spills its keyed requests"
    pinned_changes = [r for r, d in desired.replicas.items()
                      if d.pinned != applied.replicas.get(r, d).pinned]
    if pinned_changes:
        return True, f"admin pin changed for {', '.join(sorted(pinned_changes))}"
    threshold = math.log1p(settings.min_weight_change)
    moved: dict[str, str] = {}
    lagging: list[str] = []
    for name, new in desired.replicas.items():
        old = applied.replicas.get(name)
        if old is None or new.down or new.weight == old.weight:
            continue
        text = f"{name} {old.weight}->{new.weight}"
        if abs(math.log(new.weight / old.weight)) >= threshold:
            moved[name] = text
        else:
            lagging.append(text)
    resumed = sorted(set(applied.shedding()) - set(desired.shedding()))
    if resumed:
        moved.update({name: f"{name} keeps its keyed requests again" for name in resumed})
    since = None if last_weight_reload_at is None else desired.at - last_weight_reload_at
    if not moved:
        lag = None if differing_since is None else desired.at - differing_since
        if lagging and lag is not None and lag >= settings.max_weight_lag_s:
            return True, (f"weights brought to their targets after {lag:.0f}s apart: "
                          + ", ".join(lagging))
        return False, f"no weight moved by {settings.min_weight_change:.0%} or more"
    urgent = [text for name, text in moved.items() if desired.replicas[name].urgent]
    if urgent:
        # The first decision on strong evidence is an event, like a health
        # flip; the interval is for drift, and drift does not form streaks.
        return True, "strong pace evidence: " + ", ".join(urgent)
    if since is not None and since < settings.min_reload_interval_s:
        return False, (f"held: {', '.join(moved.values())} waits for the minimum reload "
                       f"interval ({since:.1f}s of {settings.min_reload_interval_s:g}s)")
    return True, "weights moved: " + ", ".join(moved.values())
