"""Pace probes, their sequential test and the fast path of the policy, on virtual time.

A replica's seconds per token (and the batch it ran in) is fed round by
round (every ``pace.interval_s``, as the controller probes), folded by the
tracker, decided on by the policy and filtered by its hysteresis, exactly
as the controller chains them. No timing is asserted against a wall clock:
the clock is the loop counter.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from router.config.spec import ControllerSpec, PaceSpec
from router.controller.changepoint import detection_rounds, run_length, threshold
from router.controller.pace import (
    PaceReading,
    PaceTracker,
    batch_state,
    equal_load_deviations,
    measure,
    plan_test,
    within_slope,
)
from router.controller.policy import (
    Decision,
    ReplicaSignals,
    Sample,
    Snapshot,
    decide,
    should_apply,
    weights_differ,
)

SETTINGS = ControllerSpec()
NAMES = ("replica-0", "replica-1", "replica-2", "replica-3")
# A GPU-like decode step: 20 ms plus 0.4 ms per sequence in the batch (the
# policy scenarios' simulated replicas).
STEP_S, PER_SEQ_S = 0.020, 0.0004

Pace = Callable[[str, float], PaceReading]


def step(batch: float, slower: float = 1.0, noise: float = 1.0) -> PaceReading:
    return PaceReading((STEP_S + PER_SEQ_S * batch) * slower * noise, batch)


@dataclass
class Run:
    """What the gateway ran over time: (t, weights) after every reload."""

    reloads: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def first_time(self, name: str, test: Callable[[int], bool], after: float) -> float | None:
        return next((at for at, weights in self.reloads
                     if at >= after and test(weights[name])), None)


def simulate(pace: Pace, seconds: int, settings: ControllerSpec = SETTINGS,
             names: tuple[str, ...] = NAMES) -> Run:
    tracker = PaceTracker(settings.pace)
    run = Run()
    desired: Decision | None = None
    applied: Decision | None = None
    last_reload: float | None = None
    differing_since: float | None = None
    interval = settings.pace.interval_s
    for index in range(round(seconds / interval)):
        now = index * interval
        signals = tracker.fold({n: pace(n, now) for n in names}, now)
        desired = decide(Snapshot(now=now, replicas=names, pace=signals, pacing=True),
                         desired, settings)
        if not weights_differ(applied, desired):
            differing_since = None
        elif differing_since is None:
            differing_since = now
        apply, _why = should_apply(applied, desired, last_reload, settings, differing_since)
        if apply:
            applied, last_reload, differing_since = desired, now, None
            run.reloads.append((now, desired.weights()))
    return run


def equal_fleet(seed: int, jitter: float = 0.10, correlation: float = 0.0) -> Pace:
    """Batches that wander with the load (each replica its own) and a probe
    whose reading is off by AR(1) noise: ``jitter`` a round, ``correlation``
    from one round to the next (a long prompt stays in a batch for seconds)."""
    rng = random.Random(seed)
    batches = dict.fromkeys(NAMES, 16.0)
    offsets = dict.fromkeys(NAMES, 0.0)

    def pace(name: str, t: float) -> PaceReading:
        batches[name] = min(32.0, max(1.0, batches[name] + rng.gauss(0, 3)))
        offsets[name] = correlation * offsets[name] + rng.gauss(0, jitter)
        return step(round(batches[name]), noise=math.exp(offsets[name]))
    return pace


def slowed(factor: float, start: float, end: float = float("inf")) -> Pace:
    def pace(name: str, t: float) -> PaceReading:
        slow = name == "replica-3" and start <= t < end
        return step(12, slower=factor if slow else 1.0)
    return pace


def test_a_step_to_three_times_slower_halves_the_weight_within_5s_and_returns_within_20s() -> None:
    run = simulate(slowed(3.0, start=90, end=150), 240)
    halved = run.first_time("replica-3", lambda w: w <= 25, after=90)
    assert halved is not None and halved - 90 <= 5
    back = run.first_time("replica-3", lambda w: w >= 40, after=150)
    assert back is not None and back - 150 <= 20
    # The others never moved: the median is theirs.
    assert all(w["replica-0"] == 50 for _, w in run.reloads)


def test_a_slowed_replica_whose_batch_follows_its_weight_moves_once_each_way() -> None:
    """As on a running fleet: least_conn hands each replica in-flight work
    in proportion to its weight, so the slowed replica runs a batch of one
    or two while it is cut. Its rounds from before the slowdown (batch 18,
    fast) must not bend the slope it is judged by: no drift back towards
    even while it is still slow, and no "fast" reading once it recovers."""
    rng = random.Random(3)
    tracker = PaceTracker(SETTINGS.pace)
    weights = dict.fromkeys(NAMES, 50)
    moves: list[tuple[float, int]] = []
    desired: Decision | None = None
    interval = SETTINGS.pace.interval_s
    for index in range(round(240 / interval)):
        now = index * interval
        total = sum(weights.values())
        readings = {}
        for name in NAMES:
            batch = max(1.0, round(72 * weights[name] / total + rng.gauss(0, 2))) + 1
            slower = 3.0 if name == "replica-3" and 90 <= now < 150 else 1.0
            readings[name] = step(batch, slower=slower, noise=math.exp(rng.gauss(0, 0.05)))
        signals = tracker.fold(readings, now)
        desired = decide(Snapshot(now=now, replicas=NAMES, pace=signals, pacing=True),
                         desired, SETTINGS)
        if desired.weights()["replica-3"] != weights["replica-3"]:
            moves.append((now, desired.weights()["replica-3"]))
        weights = desired.weights()
    assert [weight <= 25 for _, weight in moves] == [True, False], moves
    assert moves[0][0] - 90 <= 5 and moves[1][0] - 150 <= 20, moves
    assert moves[1][1] == 50, moves


def test_one_or_two_slow_rounds_move_nothing() -> None:
    def pace(name: str, t: float) -> PaceReading:
        return step(12, slower=5.0 if name == "replica-3" and t in (40, 41) else 1.0)

    run = simulate(pace, 120)
    assert len(run.reloads) == 1  # the first configuration only


def test_a_busier_replica_reads_equal_at_equal_batch() -> None:
    """least_conn handing one replica more work makes its steps longer; it is
    not slower, and must not lose weight for it (the old feedback loop)."""
    rng = random.Random(7)

    def pace(name: str, t: float) -> PaceReading:
        busy = name == "replica-0"
        return step(rng.randint(24, 32) if busy else rng.randint(2, 10))

    run = simulate(pace, 900)
    assert len(run.reloads) == 1, run.reloads
    # Without the batch taken out it would read about 1.4x slower.
    assert math.exp(equal_load_deviations({"a": step(28), "b": step(6), "c": step(6)},
                                          0.0)["a"]) > 1.3


def test_the_slope_is_the_fleets_within_replica_growth() -> None:
    history = {n: [(b, math.log(step(b, slower=3.0 if n == "slow" else 1.0).seconds_per_token))
                   for b in (4, 8, 16, 24)] for n in ("a", "b", "slow")}
    # log((20 + 0.4 b) ms) grows about 0.015 per sequence over this range,
    # whatever the replica's own speed factor.
    assert within_slope(history) == pytest.approx(0.0157, abs=0.001)
    assert within_slope({"a": [(8, -3.0), (8, -3.1), (8, -2.9)]}) == 0.0


def test_a_slow_ramp_lowers_the_weight_without_going_back_and_forth() -> None:
    def pace(name: str, t: float) -> PaceReading:
        ramp = 1.0 + min(1.0, max(0.0, (t - 80) / 60))  # 1x to 2x over a minute
        return step(12, slower=ramp if name == "replica-3" else 1.0)

    run = simulate(pace, 240)
    weights = [w["replica-3"] for _, w in run.reloads]
    assert weights[-1] <= 30
    assert weights == sorted(weights, reverse=True), weights


@pytest.mark.parametrize(("seed", "jitter", "correlation"),
                         [(1, 0.1, 0.0), (2, 0.1, 0.0), (1, 0.1, 0.7), (2, 0.2, 0.8)],
                         ids=["iid-1", "iid-2", "ar-0.7", "ar-0.8"])
def test_noise_on_an_equal_fleet_makes_at_most_the_budgeted_moves_in_an_hour(
        seed: int, jitter: float, correlation: float) -> None:
    """The budget is one false move an hour; a move and its return are two
    reloads, so at most three reloads past the first configuration."""
    run = simulate(equal_fleet(seed, jitter, correlation), 3600)
    assert len(run.reloads) - 1 <= 2 * SETTINGS.pace.false_moves_per_hour, run.reloads


def test_the_threshold_meets_the_false_alarm_budget_and_buys_a_delay() -> None:
    for k in (0.5, 1.0, 3.0):
        h = threshold(k, 14_400)
        assert run_length(0.0, k, h) >= 2 * 14_400
        assert run_length(0.0, k, h * 0.95) < 2 * 14_400
    k, h = 1.0, threshold(1.0, 14_400)
    assert detection_rounds(4.0, k, h, 3) < detection_rounds(2.0, k, h, 3)
    assert detection_rounds(20.0, k, h, 3) == 3  # never fewer than min_rounds
    # A tighter budget costs delay.
    plan_loose = plan_test(PaceSpec(false_moves_per_hour=10), 0.05, 4)
    plan_tight = plan_test(PaceSpec(false_moves_per_hour=0.1), 0.05, 4)
    assert plan_tight.h > plan_loose.h
    assert plan_tight.delay_rounds(1.5, 3) >= plan_loose.delay_rounds(1.5, 3)


def test_a_move_names_its_statistic_samples_and_threshold() -> None:
    tracker = PaceTracker(SETTINGS.pace)
    for t in range(40):
        signals = tracker.fold({n: step(12, slower=3.0 if n == "c" and t >= 30 else 1.0)
                                for n in ("a", "b", "c")}, float(t))
        if signals["c"].just_moved:
            break
    moved = signals["c"]
    assert moved.ratio == pytest.approx(3.0, rel=0.05) and moved.zone == "slow"
    assert moved.moved_on_rounds >= SETTINGS.pace.min_rounds
    assert "moved now: CUSUM reached h" in moved.evidence()
    assert f"on {moved.moved_on_rounds} rounds" in moved.evidence()


def test_stale_pace_is_no_data_and_the_weight_holds() -> None:
    tracker = PaceTracker(SETTINGS.pace)
    for t in range(40):
        signals = tracker.fold({"a": step(12), "b": step(12, slower=3.0 if t >= 30 else 1.0)},
                               float(t))
    fresh = decide(Snapshot(now=39.0, replicas=("a", "b"), pace=signals, pacing=True), None,
                   SETTINGS)
    assert fresh.replicas["b"].weight < 50
    stale = decide(Snapshot(now=39.0 + SETTINGS.pace.max_age_s + 1, replicas=("a", "b"),
                            pace=signals, pacing=True), fresh, SETTINGS)
    assert stale.replicas["b"].reason == "holding: no fresh pace reading"
    assert stale.replicas["b"].weight == fresh.replicas["b"].weight


def test_with_pace_on_the_p99s_move_no_weight() -> None:
    signals = {n: ReplicaSignals(ttft_p99=Sample(0.1, 1.0), e2e_p99=Sample(1.0, 1.0))
               for n in NAMES} | {"replica-3": ReplicaSignals(ttft_p99=Sample(0.5, 1.0),
                                                              e2e_p99=Sample(5.0, 1.0))}
    decision = decide(Snapshot(now=1.0, replicas=NAMES, signals=signals, pacing=True), None,
                      SETTINGS)
    assert set(decision.weights().values()) == {50}


def _sse(texts: list[str]) -> bytes:
    chunks = [f"data: {json.dumps({'choices': [{'text': t}]})}\n\n" for t in texts]
    return ("".join(chunks) + "data: [DONE]\n\n").encode()


def test_measure_times_the_gaps_between_tokens_and_reads_the_batch() -> None:
    ticks = iter([1.0, 1.1, 1.2, 1.3])

    def replica(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text=METRICS)
        body = json.loads(request.content)
        assert body["stream"] and body["ignore_eos"] and body["max_tokens"] == 4
        return httpx.Response(200, content=_sse(["a", "b", "", "c", "d"]))

    async def main() -> PaceReading | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(replica)) as client:
            return await measure(client, "http://r", "m", 4, clock=lambda: next(ticks))

    reading = asyncio.run(main())
    assert reading is not None
    assert reading.seconds_per_token == pytest.approx(0.1)
    assert reading.batch == 7.0


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 5.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
"""
WAITING = """# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
"""


@pytest.mark.parametrize(("text", "running", "waiting"), [
    (METRICS, 7.0, None), (METRICS + WAITING, 7.0, 3.0), ("", None, None),
    ("# TYPE other gauge\nother 3\n", None, None), ("not { metrics", None, None)])
def test_the_batch_is_vllms_running_and_waiting_gauges_or_nothing(
        text: str, running: float | None, waiting: float | None) -> None:
    state = batch_state(text)
    assert (state.running, state.waiting) == (running, waiting)



def test_a_replica_without_vllm_metrics_is_timed_at_the_fleets_batch() -> None:
    def replica(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(404)
        return httpx.Response(200, content=_sse(["a", "b", "c"]))

    async def main() -> PaceReading | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(replica)) as client:
            return await measure(client, "http://r", "m", 3)

    reading = asyncio.run(main())
    assert reading is not None and reading.batch is None
    deviations = equal_load_deviations({"a": step(8), "b": step(8),
                                        "other": PaceReading(step(8).seconds_per_token)}, 0.015)
    assert deviations["other"] == pytest.approx(0.0)


@pytest.mark.parametrize("answer", [httpx.Response(503), httpx.Response(200, content=_sse(["a"])),
                                    httpx.Response(200, content=b"data: {not json\n\n")])
def test_measure_gives_no_reading_for_a_failed_or_short_probe(answer: httpx.Response) -> None:
    async def main() -> PaceReading | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: answer)) as client:
            return await measure(client, "http://r", "m", 4)

    assert asyncio.run(main()) is None


def test_an_outlier_held_back_by_pressure_is_urgent_once_the_pressure_drops() -> None:
    """A 3x slower replica found while the fleet is busy keeps its
    proportional weight; when the pressure falls the outlier rule applies at
    once, past the reload interval, not ten seconds later."""
    settings = ControllerSpec(slow_start_s=0.0)
    tracker = PaceTracker(settings.pace)
    names = ("a", "b", "c")
    for t in range(40):
        pace = tracker.fold({n: step(12, slower=3.0 if n == "c" and t >= 30 else 1.0)
                             for n in names}, float(t))
    now = 39.0

    def snapshot(now: float, waiting: float) -> Snapshot:
        signals = {n: ReplicaSignals(waiting=Sample(waiting, 0.0), running=Sample(10.0, 0.0),
                                     kv_usage=Sample(0.1, 0.0)) for n in names}
        return Snapshot(now=now, replicas=names, pace=pace, signals=signals, pacing=True)

    busy = decide(snapshot(now, waiting=10.0), None, settings)
    assert not busy.replicas["c"].outlier and busy.replicas["c"].weight == 17
    calm = decide(snapshot(now + 0.5, waiting=0.0), busy, settings)
    assert calm.replicas["c"].outlier and calm.replicas["c"].urgent
    assert calm.replicas["c"].weight == 1
    apply, why = should_apply(busy, calm, last_weight_reload_at=now, settings=settings)
    assert apply and why.startswith("strong pace evidence: c 17->1")
    # The next decision, still an outlier, is not news.
    later = decide(snapshot(now + 1, waiting=0.0), calm, settings)
    assert later.replicas["c"].outlier and not later.replicas["c"].urgent


def test_a_stall_right_after_a_start_does_not_strand_the_weight() -> None:
    """A controller started beside a replica that stalls for its first rounds
    (a GPU replica compiling for a new batch size, as the rollout-gpu run saw
    on two replicas: 50/50 -> 100/1 on three rounds) moves on the stall; once
    the replica runs even again, its weight must come back. Every later round
    of both replicas then deviates from the stall's levels alike: a bias for
    the CUSUM, not noise that would raise the threshold past any evidence."""
    base = equal_fleet(seed=5)
    pair = ("replica-0", "replica-1")

    def pace(name: str, t: float) -> PaceReading:
        reading = base(name, t)
        if name == "replica-1" and t < 2.5:
            return PaceReading(reading.seconds_per_token * 100, reading.batch)
        return reading

    run = simulate(pace, 180, names=pair)
    cut = run.first_time("replica-1", lambda w: w <= 25, after=0)
    assert cut is not None, run.reloads
    back = run.first_time("replica-1", lambda w: w >= 40, after=cut)
    assert back is not None and back - cut <= 30, run.reloads
