"""Capacity from a replica's batch slots and KV cache, never from how full it is now."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config.spec import ControllerSpec
from router.controller.capacity import CapacityTracker
from router.controller.pace import PaceReading, PaceTracker, batch_state
from router.controller.policy import Snapshot, decide

SETTINGS = ControllerSpec()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tracker(slots: dict[str, int] | None = None) -> CapacityTracker:
    return CapacityTracker(deadband=1.25, min_rounds=3, memory_rounds=300, slots=slots)


def full(batch: float, kv_usage: float = 0.3) -> PaceReading:
    """Requests waiting while the cache has room: the batch is the slot limit."""
    return PaceReading(0.02, batch, waiting=4, kv_usage=kv_usage)


def free(batch: float) -> PaceReading:
    return PaceReading(0.02, batch, waiting=0, kv_usage=0.2)


@pytest.mark.parametrize(("rounds", "expected"), [
    # Measured: half the room of the others, who showed 32: half the weight.
    ([{"a": full(32), "b": full(32), "small": full(16)}] * 5, {"a": 1.0, "small": 0.5}),
    # Equal replicas, all full: even.
    ([{"a": full(32), "b": full(32), "c": full(32)}] * 5, {"a": 1.0, "c": 1.0}),
    # Limits that wander stay inside the deadband: even.
    ([{"a": full(28), "b": full(32), "c": full(26)}] * 5, {"a": 1.0, "c": 1.0}),
    # The others never ran out of room: their largest batch is a lower bound.
    ([{"a": free(24), "b": free(20), "small": full(16)}] * 5, {"a": 1.0, "small": 0.73}),
    # Two rounds with a queue are not yet a limit.
    ([{"a": free(30), "small": full(8)}] * 2, {"small": 1.0}),
    # A fleet that never queued: nothing to say.
    ([{"a": free(4), "b": free(30)}] * 5, {"a": 1.0, "b": 1.0}),
    # A queue behind a full cache is long prompts, not slots: nothing to say
    # (an equal fleet with 1,500-word prompts was cut to a fifth on these).
    ([{"a": free(30), "b": free(28), "long": full(6, kv_usage=0.8)}] * 20, {"long": 1.0}),
    # An engine without vLLM's gauges: nothing to say either.
    ([{"a": PaceReading(0.02), "b": full(16)}] * 5, {"b": 1.0}),
], ids=["half", "equal-full", "mix-noise", "lower-bound", "too-few", "never-full",
        "cache-bound", "no-gauges"])
def test_measured_slots(rounds: list[dict[str, PaceReading]], expected: dict[str, float]) -> None:
    capacity = tracker()
    for readings in rounds:
        signals = capacity.fold(readings)
    for name, ratio in expected.items():
        assert signals[name].ratio == pytest.approx(ratio, abs=0.01), name


def test_slots_a_replica_was_started_with_count_from_the_first_round_whatever_the_load() -> None:
    capacity = tracker({"a": 32, "b": 32, "c": 32, "small": 16})
    signals = capacity.fold({"a": free(3), "b": free(2), "c": free(1), "small": free(0)})
    assert signals["small"].ratio == pytest.approx(0.5)
    assert signals["a"].ratio == 1.0
    assert signals["small"].evidence() == ("capacity 16 batch slots (started with) vs 32 for the "
                                           "others (0.50x)")
    # Queues behind long prompts on an equal fleet change nothing.
    equal = tracker({"a": 32, "b": 32, "c": 32})
    for _ in range(40):
        signals = equal.fold({"a": full(6, kv_usage=0.9), "b": free(30), "c": full(9, 0.4)})
    assert {name: s.ratio for name, s in signals.items()} == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_a_smaller_kv_cache_is_less_room() -> None:
    capacity = tracker({"a": 32, "b": 32, "half": 32})
    tokens = {"a": 200_000, "b": 200_000, "half": 100_000}
    signals = capacity.fold({n: PaceReading(0.02, 4, 0, 0.1, kv_tokens=t)
                             for n, t in tokens.items()})
    assert signals["half"].ratio == pytest.approx(0.5)
    assert "100,000 KV cache tokens (vLLM's cache) vs 200,000" in signals["half"].evidence()
    assert signals["a"].ratio == 1.0


def test_the_limit_outlives_the_queue_until_the_replica_leaves() -> None:
    capacity = tracker()
    for _ in range(5):
        capacity.fold({"a": full(32), "small": full(16)})
    for _ in range(100):  # weighted down, it no longer queues
        signals = capacity.fold({"a": free(20), "small": free(8)})
    assert signals["small"].ratio == pytest.approx(0.5)
    assert ("capacity 16 batch slots (measured at saturation) vs 32 for the others"
            in signals["small"].evidence())
    capacity.forget("small")
    assert capacity.fold({"a": free(20), "small": free(8)})["small"].ratio == 1.0


@pytest.mark.parametrize("fixture", ["vllm-cpu-0.32.0.metrics.txt",
                                     "vllm-gpu-0.26.0.metrics.txt"])
def test_the_cache_size_is_read_from_vllms_cache_config_info(fixture: str) -> None:
    state = batch_state((FIXTURES / fixture).read_text())
    assert state.kv_tokens is not None and state.kv_tokens > 0
    assert state.kv_usage is not None and 0 <= state.kv_usage <= 1


def test_a_replica_with_half_the_slots_gets_half_the_weight_and_equal_speed_moves_nothing() -> None:
    names = ("a", "b", "c", "small")
    pace = PaceTracker(SETTINGS.pace, slots={n: 16 if n == "small" else 32 for n in names})
    decision = None
    for t in range(10):
        readings = {n: PaceReading(0.02 + 0.0004 * (16 if n == "small" else 32),
                                   16 if n == "small" else 32, waiting=3, kv_usage=0.2)
                    for n in names}
        signals = pace.fold(readings, float(t))
        decision = decide(Snapshot(now=float(t), replicas=names, pace=signals, pacing=True,
                                   capacity=pace.capacity.signals), decision, SETTINGS)
    assert decision is not None
    assert decision.weights() == {"a": 50, "b": 50, "c": 50, "small": 25}
    assert "capacity 16 batch slots" in decision.reasons()["small"]
    # Not slower for it: its pace at equal batch is even.
    assert signals["small"].ratio == 1.0
