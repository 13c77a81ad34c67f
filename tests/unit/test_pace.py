"""Pace probes and the fast path of the policy, on virtual time.

A replica's seconds per token is fed round by round (one round a second, as
the controller probes), folded by the tracker, decided on by the policy and
filtered by its hysteresis, exactly as the controller chains them. No
timing is asserted against a wall clock: the clock is the loop counter.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from router.config.spec import ControllerSpec
from router.controller.pace import PaceTracker, measure, round_ratios, zone_of
from router.controller.policy import (
    Decision,
    ReplicaSignals,
    Sample,
    Snapshot,
    decide,
    should_apply,
)

SETTINGS = ControllerSpec()
NAMES = ("replica-0", "replica-1", "replica-2", "replica-3")
BASE_PACE = 0.03  # seconds per token of an unloaded-ish simulated replica

Pace = Callable[[str, float], float]


@dataclass
class Run:
    """What the gateway ran over time: (t, weights) after every reload."""

    reloads: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def weight_at(self, name: str, t: float) -> int:
        weight = 50
        for at, weights in self.reloads:
            if at <= t:
                weight = weights[name]
        return weight

    def first_time(self, name: str, test: Callable[[int], bool], after: float) -> float | None:
        return next((at for at, weights in self.reloads
                     if at >= after and test(weights[name])), None)


def simulate(pace: Pace, seconds: int, settings: ControllerSpec = SETTINGS) -> Run:
    tracker = PaceTracker(settings.pace)
    run = Run()
    desired: Decision | None = None
    applied: Decision | None = None
    last_reload: float | None = None
    for t in range(seconds):
        now = float(t)
        signals = tracker.fold({n: pace(n, now) for n in NAMES}, now)
        desired = decide(Snapshot(now=now, replicas=NAMES, pace=signals), desired, settings)
        apply, _why = should_apply(applied, desired, last_reload, settings)
        if apply:
            applied, last_reload = desired, now
            run.reloads.append((now, desired.weights()))
    return run


def slowed(factor: float, start: float, end: float = float("inf")) -> Pace:
    def pace(name: str, t: float) -> float:
        return BASE_PACE * (factor if name == "replica-3" and start <= t < end else 1.0)
    return pace


def test_a_step_to_three_times_slower_halves_the_weight_within_5s_and_returns_within_20s() -> None:
    run = simulate(slowed(3.0, start=30, end=90), 150)
    halved = run.first_time("replica-3", lambda w: w <= 25, after=30)
    assert halved is not None and halved - 30 <= 5
    back = run.first_time("replica-3", lambda w: w >= 40, after=90)
    assert back is not None and back - 90 <= 20
    # The others never moved: the median is theirs.
    assert all(w["replica-0"] == 50 for _, w in run.reloads)


def test_a_single_slow_round_moves_nothing() -> None:
    def pace(name: str, t: float) -> float:
        return BASE_PACE * (5.0 if name == "replica-3" and t == 40 else 1.0)

    run = simulate(pace, 120)
    assert len(run.reloads) == 1  # the first configuration only


def test_a_slow_ramp_lowers_the_weight_without_going_back_and_forth() -> None:
    def pace(name: str, t: float) -> float:
        ramp = 1.0 + min(1.0, max(0.0, (t - 20) / 60))  # 1x to 2x over a minute
        return BASE_PACE * (ramp if name == "replica-3" else 1.0)

    run = simulate(pace, 160)
    weights = [w["replica-3"] for _, w in run.reloads]
    assert weights[-1] <= 30
    assert weights == sorted(weights, reverse=True), weights
    # The reload budget holds: never two weight reloads within the interval.
    times = [at for at, _ in run.reloads]
    assert all(b - a >= SETTINGS.min_reload_interval_s
               for a, b in zip(times, times[1:], strict=False))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noise_on_equal_replicas_makes_no_reload(seed: int) -> None:
    rng = random.Random(seed)

    def pace(name: str, t: float) -> float:
        # Batches of 20 to 32 sequences: the step time varies by about 15 %.
        return BASE_PACE * rng.uniform(0.87, 1.13)

    run = simulate(pace, 300)
    assert len(run.reloads) == 1, run.reloads


@pytest.mark.parametrize(("ratio", "zone"), [(1.0, "even"), (1.24, "even"), (1.3, "slow"),
                                             (0.79, "fast"), (0.81, "even")])
def test_zones_split_at_the_deadband(ratio: float, zone: str) -> None:
    assert zone_of(ratio, 1.25) == zone


def test_ratios_need_two_readings_and_use_the_median() -> None:
    assert round_ratios({"a": 0.03}) == {}
    assert round_ratios({"a": 0.03, "b": 0.03, "c": 0.09}) == {"a": 1.0, "b": 1.0, "c": 3.0}


def test_stale_pace_is_no_data_and_the_weight_holds() -> None:
    tracker = PaceTracker(SETTINGS.pace)
    for t in range(5):
        signals = tracker.fold({"a": 0.03, "b": 0.09}, float(t))
    fresh = decide(Snapshot(now=4.0, replicas=("a", "b"), pace=signals), None, SETTINGS)
    assert fresh.replicas["b"].weight < 50
    stale = decide(Snapshot(now=4.0 + SETTINGS.pace.max_age_s + 1, replicas=("a", "b"),
                            pace=signals), fresh, SETTINGS)
    assert stale.replicas["b"].reason == "holding: no fresh signals"
    assert stale.replicas["b"].weight == fresh.replicas["b"].weight


def _sse(texts: list[str]) -> bytes:
    chunks = [f"data: {json.dumps({'choices': [{'text': t}]})}\n\n" for t in texts]
    return ("".join(chunks) + "data: [DONE]\n\n").encode()


def test_measure_times_the_gaps_between_tokens() -> None:
    ticks = iter([1.0, 1.1, 1.2, 1.3])

    def replica(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] and body["ignore_eos"] and body["max_tokens"] == 4
        return httpx.Response(200, content=_sse(["a", "b", "", "c", "d"]))

    async def main() -> float | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(replica)) as client:
            return await measure(client, "http://r", "m", 4, clock=lambda: next(ticks))

    assert asyncio.run(main()) == pytest.approx(0.1)


@pytest.mark.parametrize("answer", [httpx.Response(503), httpx.Response(200, content=_sse(["a"])),
                                    httpx.Response(200, content=b"data: {not json\n\n")])
def test_measure_gives_no_reading_for_a_failed_or_short_probe(answer: httpx.Response) -> None:
    async def main() -> float | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: answer)) as client:
            return await measure(client, "http://r", "m", 4)

    assert asyncio.run(main()) is None


def test_an_outlier_held_back_by_pressure_is_urgent_once_the_pressure_drops() -> None:
    """Strong pace evidence of a 3x slower replica while the fleet is busy
    keeps its proportional weight; when the pressure falls the outlier rule
    applies at once, past the reload interval, not ten seconds later."""
    settings = ControllerSpec(smoothing=1.0, slow_start_s=0.0)
    tracker = PaceTracker(settings.pace)
    names = ("a", "b", "c")
    for t in range(5):
        pace = tracker.fold({"a": 0.03, "b": 0.03, "c": 0.09}, float(t))

    def snapshot(now: float, waiting: float) -> Snapshot:
        signals = {n: ReplicaSignals(waiting=Sample(waiting, 0.0), running=Sample(10.0, 0.0),
                                     kv_usage=Sample(0.1, 0.0)) for n in names}
        return Snapshot(now=now, replicas=names, pace=pace, signals=signals)

    busy = decide(snapshot(4.0, waiting=10.0), None, settings)
    assert not busy.replicas["c"].outlier and busy.replicas["c"].weight == 17
    calm = decide(snapshot(5.0, waiting=0.0), busy, settings)
    assert calm.replicas["c"].outlier and calm.replicas["c"].urgent
    assert calm.replicas["c"].weight == 1
    apply, why = should_apply(busy, calm, last_weight_reload_at=4.5, settings=settings)
    assert apply and why.startswith("strong pace evidence: c 17->1")
    # The next decision, still an outlier, is not news.
    later = decide(snapshot(6.0, waiting=0.0), calm, settings)
    assert later.replicas["c"].outlier and not later.replicas["c"].urgent
