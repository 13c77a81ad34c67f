"""The drill's windows: which requests count as before, during and after a fault."""

from __future__ import annotations

from router.bench.drill import AFTER, BEFORE, DURING, Observation, window_bounds


def test_a_replica_taken_out_is_during_the_fault_until_it_is_back() -> None:
    seen = Observation(fault_at=10.0, unhealthy_at=10.1, out_at=11.0, healthy_at=20.0,
                       back_at=21.0)
    assert window_bounds(seen) == {BEFORE: (0.0, 10.0), DURING: (10.0, 21.0),
                                   AFTER: (21.0, float("inf"))}


def test_a_replica_never_taken_out_is_during_the_fault_until_it_is_cleared() -> None:
    slow = Observation(fault_at=10.0, cleared_at=70.0)
    assert window_bounds(slow)[DURING] == (10.0, 70.0)
    back_before_missed = Observation(fault_at=10.0, unhealthy_at=10.2, healthy_at=10.9)
    assert window_bounds(back_before_missed)[DURING] == (10.0, 10.9)


def test_a_replica_that_never_came_back_is_during_the_fault_to_the_end() -> None:
    seen = Observation(fault_at=10.0, unhealthy_at=10.1, out_at=11.0)
    assert window_bounds(seen)[DURING] == (10.0, float("inf"))
    assert window_bounds(seen)[AFTER] == (float("inf"), float("inf"))
