"""Capacity from the batch a replica runs while requests wait, and its weight."""

from __future__ import annotations

import pytest

from router.config.spec import ControllerSpec
from router.controller.capacity import CapacityTracker
from router.controller.pace import PaceReading, PaceTracker
from router.controller.policy import Snapshot, decide

SETTINGS = ControllerSpec()


def tracker() -> CapacityTracker:
    return CapacityTracker(deadband=1.25, min_rounds=3, memory_rounds=300)


def full(batch: float) -> PaceReading:
    return PaceReading(0.02, batch, waiting=4)


def free(batch: float) -> PaceReading:
    return PaceReading(0.02, batch, waiting=0)


@pytest.mark.parametrize(("rounds", "expected"), [
    # Half the room of the others, who showed 32: half the weight.
    ([{"a": full(32), "b": full(32), "small": full(16)}] * 5, {"a": 1.0, "small": 0.5}),
    # Equal replicas, all full: even.
    ([{"a": full(32), "b": full(32), "c": full(32)}] * 5, {"a": 1.0, "c": 1.0}),
    # Limits that wander with the prompt mix stay inside the deadband: even.
    ([{"a": full(28), "b": full(32), "c": full(26)}] * 5, {"a": 1.0, "c": 1.0}),
    # The others never ran out of room: their largest batch is a lower bound.
    ([{"a": free(24), "b": free(20), "small": full(16)}] * 5, {"a": 1.0, "small": 0.73}),
    # Two rounds with a queue are not yet a limit.
    ([{"a": free(30), "small": full(8)}] * 2, {"small": 1.0}),
    # A fleet that never queued: nothing to say.
    ([{"a": free(4), "b": free(30)}] * 5, {"a": 1.0, "b": 1.0}),
    # An engine without vLLM's gauges: nothing to say either.
    ([{"a": PaceReading(0.02), "b": full(16)}] * 5, {"b": 1.0}),
], ids=["half", "equal-full", "mix-noise", "lower-bound", "too-few", "never-full", "no-gauges"])
def test_capacity_ratio(rounds: list[dict[str, PaceReading]], expected: dict[str, float]) -> None:
    capacity = tracker()
    for readings in rounds:
        signals = capacity.fold(readings)
    for name, ratio in expected.items():
        assert signals[name].ratio == pytest.approx(ratio, abs=0.01), name


def test_the_limit_outlives_the_queue_until_the_replica_leaves() -> None:
    capacity = tracker()
    for _ in range(5):
        capacity.fold({"a": full(32), "small": full(16)})
    for _ in range(100):  # weighted down, it no longer queues
        signals = capacity.fold({"a": free(20), "small": free(8)})
    assert signals["small"].ratio == pytest.approx(0.5)
    assert "capacity 16 sequences at saturation vs 32 for the others" in signals["small"].evidence()
    capacity.forget("small")
    assert capacity.fold({"a": free(20), "small": free(8)})["small"].ratio == 1.0


def test_a_replica_with_half_the_room_gets_half_the_weight_and_equal_speed_moves_nothing() -> None:
    pace = PaceTracker(SETTINGS.pace)
    names = ("a", "b", "c", "small")
    decision = None
    for t in range(10):
        readings = {n: PaceReading(0.02 + 0.0004 * (16 if n == "small" else 32),
                                   16 if n == "small" else 32, waiting=3) for n in names}
        signals = pace.fold(readings, float(t))
        decision = decide(Snapshot(now=float(t), replicas=names, pace=signals, pacing=True,
                                   capacity=pace.capacity.signals), decision, SETTINGS)
    assert decision is not None
    assert decision.weights() == {"a": 50, "b": 50, "c": 50, "small": 25}
    assert "capacity 16 sequences" in decision.reasons()["small"]
    # Not slower for it: its pace at equal batch is even.
    assert signals["small"].ratio == 1.0
