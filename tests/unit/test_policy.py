"""Table-driven tests of the weight policy and its hysteresis."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from router.config.spec import ControllerSpec
from router.controller.policy import (
    Decision,
    Health,
    Override,
    PaceSignal,
    ReplicaDecision,
    ReplicaSignals,
    Sample,
    Snapshot,
    decide,
    should_apply,
)

R = ("replica-0", "replica-1", "replica-2", "replica-3")
NOW = 1000.0
SETTINGS = ControllerSpec(smoothing=1.0)  # targets jump straight, to read results easily


def fast(ttft: float = 0.05, e2e: float = 1.0, kv: float = 0.2, waiting: float = 0,
         running: float = 4, age: float = 1.0) -> ReplicaSignals:
    return ReplicaSignals(ttft_p99=Sample(ttft, age), e2e_p99=Sample(e2e, age),
                          kv_usage=Sample(kv, age), waiting=Sample(waiting, age),
                          running=Sample(running, age))


def snap(signals: dict | None = None, health: dict | None = None,
         overrides: dict | None = None, now: float = NOW) -> Snapshot:
    return Snapshot(now=now, replicas=R, signals=signals or {r: fast() for r in R},
                    health=health or {}, overrides=overrides or {})


def test_equal_replicas_keep_equal_weights() -> None:
    decision = decide(snap(), None, SETTINGS)
    assert set(decision.weights().values()) == {50}
    assert decision.down() == frozenset()


@pytest.mark.parametrize(("slow_e2e", "expected"), [(3.0, 17), (2.0, 25), (10.0, 12)])
def test_slow_replica_gets_weight_inverse_to_its_latency_ratio(slow_e2e: float,
                                                               expected: int) -> None:
    signals = {r: fast() for r in R} | {"replica-3": fast(e2e=slow_e2e)}
    decision = decide(snap(signals), None, SETTINGS)
    assert decision.weights()["replica-3"] == expected  # capped at 4x for 10x
    assert decision.weights()["replica-0"] == 50
    assert "p99 E2E" in decision.reasons()["replica-3"]


def test_a_replica_slow_on_both_latencies_is_an_outlier_at_minimum_weight() -> None:
    signals = {r: fast() for r in R} | {"replica-3": fast(ttft=0.15, e2e=3.0)}
    decision = decide(snap(signals), None, SETTINGS)
    assert decision.weights() == {"replica-0": 50, "replica-1": 50, "replica-2": 50,
                                  "replica-3": 1}
    assert "outlier" in decision.reasons()["replica-3"]
    assert decision.down() == frozenset()  # still served a trickle, still measured


def test_an_outlier_is_released_only_well_below_the_limit() -> None:
    """About the limit, the ratio reads a little above and below it by turns:
    the weight stays at the minimum instead of jumping with a reload each."""
    def slowed(ratio: float) -> Snapshot:
        return snap({r: fast() for r in R} | {"replica-3": fast(ttft=0.05 * ratio, e2e=ratio)})

    first = decide(slowed(1.6), None, SETTINGS)
    assert first.weights()["replica-3"] == 1
    below_limit = decide(slowed(1.3), first, SETTINGS)
    assert below_limit.weights()["replica-3"] == 1
    assert "outlier" in below_limit.reasons()["replica-3"]
    released = decide(slowed(1.15), below_limit, SETTINGS)
    assert released.weights()["replica-3"] == round(50 / 1.15)
    assert "outlier" not in released.reasons()["replica-3"]
    # Never an outlier before: 1.3x is an ordinary slower replica.
    assert decide(slowed(1.3), None, SETTINGS).weights()["replica-3"] == round(50 / 1.3)


def test_pace_levels_about_the_outlier_limit_hold_the_minimum_weight() -> None:
    """The levels an H100 replica slowed by the drill read, one alarm after
    another (stability-gpu/runs/h100-b): before, weights 36, 1, 33, 1."""
    pair = ("replica-0", "replica-1")

    def pace(ratio: float) -> PaceSignal:
        return PaceSignal(ratio=ratio, zone="slow" if ratio > 1 else "fast", deviation=ratio,
                          statistic=0.0, threshold=0.1, rounds=4, moved_at=NOW,
                          moved_on_rounds=4, seconds_per_token=0.01, batch=30.0, at=NOW)

    weights, decision = [], None
    for level in (1.40, 2.01, 1.495, 1.84):  # 1.495: logged as "1.50", weighted 33
        snapshot = Snapshot(now=NOW, replicas=pair, signals={r: fast() for r in pair},
                            pace={"replica-0": pace(1 / level), "replica-1": pace(level)},
                            pacing=True)
        decision = decide(snapshot, decision, SETTINGS)
        weights.append(decision.weights()["replica-1"])
    assert weights == [36, 1, 1, 1]


def test_a_busy_fleet_keeps_the_outliers_capacity() -> None:
    busy = {r: fast(kv=0.9) for r in R}
    signals = busy | {"replica-3": fast(ttft=0.15, e2e=3.0, kv=0.9)}
    decision = decide(snap(signals), None, SETTINGS)
    assert decision.weights()["replica-3"] == 17
    assert "outlier" not in decision.reasons()["replica-3"]


def test_outliers_can_be_turned_off() -> None:
    signals = {r: fast() for r in R} | {"replica-3": fast(ttft=0.15, e2e=3.0)}
    decision = decide(snap(signals), None, ControllerSpec(smoothing=1.0, outlier_latency_ratio=0))
    assert decision.weights()["replica-3"] == 17


def test_all_replicas_slow_together_changes_nothing() -> None:
    signals = {r: fast(ttft=2.0, e2e=30.0) for r in R}
    assert set(decide(snap(signals), None, SETTINGS).weights().values()) == {50}


def test_pressure_never_moves_a_weight() -> None:
    # A full KV cache and a queue are load: least_conn balances it, and a
    # weight that followed it would fight least_conn.
    signals = {r: fast() for r in R} | {"replica-1": fast(kv=0.9, waiting=8, running=4)}
    decision = decide(snap(signals), None, SETTINGS)
    assert set(decision.weights().values()) == {50}
    assert "pressure" not in decision.reasons()["replica-1"]


@pytest.mark.parametrize("bad", [
    ReplicaSignals(),  # nothing at all
    fast(ttft=math.nan, e2e=math.nan, kv=math.nan, waiting=math.nan, running=math.nan),
    fast(e2e=9.0, ttft=5.0, age=120.0),  # stale: old samples must not count
])
def test_missing_nan_or_stale_data_holds_the_previous_weight(bad: ReplicaSignals) -> None:
    previous = Decision(NOW - 2, {r: ReplicaDecision(50, False, 50.0, "") for r in R}
                        | {"replica-2": ReplicaDecision(30, False, 30.0, "")})
    signals = {r: fast() for r in R} | {"replica-2": bad}
    decision = decide(snap(signals), previous, SETTINGS)
    assert decision.weights()["replica-2"] == 30
    assert decision.reasons()["replica-2"].startswith("holding")


def test_smoothing_moves_part_of_the_way() -> None:
    signals = {r: fast() for r in R} | {"replica-3": fast(e2e=3.0)}
    settings = ControllerSpec(smoothing=0.5)
    first = decide(snap(signals), None, settings)
    second = decide(snap(signals, now=NOW + 2), first, settings)
    third = decide(snap(signals, now=NOW + 4), second, settings)
    assert [d.weights()["replica-3"] for d in (first, second, third)] == [33, 25, 21]


def test_dead_replica_is_down_at_once_and_keeps_its_target() -> None:
    health = {"replica-1": Health(healthy=False, consecutive_failures=2, last_success=NOW - 3)}
    decision = decide(snap(health=health), None, SETTINGS)
    assert decision.down() == frozenset({"replica-1"})
    assert "2 failed health probes" in decision.reasons()["replica-1"]
    assert decision.replicas["replica-1"].target == 50


def test_flapping_replica_ramps_up_slowly_after_recovery() -> None:
    settings = ControllerSpec(smoothing=1.0, slow_start_s=30)
    weights = []
    for elapsed in (0, 6, 15, 29, 31):
        health = {"replica-2": Health(healthy=True, recovered_at=NOW)}
        weights.append(decide(snap(health=health, now=NOW + elapsed), None,
                              settings).weights()["replica-2"])
    assert weights == [1, 10, 25, 48, 50]


def test_never_all_down_keeps_the_least_bad_one() -> None:
    health = {r: Health(healthy=False, consecutive_failures=5, last_success=NOW - 60) for r in R}
    health["replica-2"] = Health(healthy=False, consecutive_failures=2, last_success=NOW - 2)
    decision = decide(snap(health=health), None, SETTINGS)
    assert decision.down() == frozenset(set(R) - {"replica-2"})
    assert decision.reasons()["replica-2"].startswith("fail open")


def test_admin_drain_and_pin_win_over_signals() -> None:
    signals = {r: fast() for r in R} | {"replica-3": fast(e2e=3.0)}
    overrides = {"replica-0": Override(drained=True),
                 "replica-3": Override(pinned_weight=90, pin_expires_at=NOW + 60)}
    decision = decide(snap(signals, overrides=overrides), None, SETTINGS)
    assert "replica-0" in decision.down()
    assert decision.reasons()["replica-0"] == "drained by admin"
    assert decision.weights()["replica-3"] == 90


def test_expired_pin_no_longer_applies() -> None:
    overrides = {"replica-3": Override(pinned_weight=90, pin_expires_at=NOW - 1)}
    assert decide(snap(overrides=overrides), None, SETTINGS).weights()["replica-3"] == 50


def test_draining_everything_still_fails_open() -> None:
    overrides = {r: Override(drained=True) for r in R}
    assert len(decide(snap(overrides=overrides), None, SETTINGS).down()) == 3


def test_fail_open_keeps_the_same_replica_while_it_stays_a_candidate() -> None:
    """Each evaluation picking a new one was a reload a second (30 in 35 s)."""
    overrides = {r: Override(drained=True) for r in R}
    first = decide(snap(overrides=overrides), None, SETTINGS)
    (kept,) = set(R) - first.down()
    health = {r: Health(last_success=NOW + 5 if r != kept else NOW - 5) for r in R}
    for step in range(1, 30):
        later = decide(snap(overrides=overrides, health=health, now=NOW + step), first,
                       SETTINGS)
        assert set(R) - later.down() == {kept}
        assert should_apply(first, later, NOW, SETTINGS)[0] is False
    # Undrained, the kept one is an ordinary replica again; the next fail-open picks anew.
    back = decide(snap(now=NOW + 40), first, SETTINGS)
    assert back.down() == frozenset() and not any(d.fail_open for d in back.replicas.values())


def _decision(at: float, weights: dict[str, int], down: frozenset[str] = frozenset()) -> Decision:
    return Decision(at, {r: ReplicaDecision(w, r in down, float(w), "") for r, w in
                         weights.items()})


@pytest.mark.parametrize(("applied", "desired", "last", "apply", "why"), [
    (None, _decision(10, {"a": 50}), None, True, "first"),
    (_decision(0, {"a": 50, "b": 50}), _decision(1, {"a": 50, "b": 50}, frozenset({"b"})), 0.5,
     True, "rotation change"),
    (_decision(0, {"a": 50, "b": 50}), _decision(20, {"a": 45, "b": 55}), 0, False,
     "no weight moved"),
    (_decision(0, {"a": 50, "b": 50}), _decision(5, {"a": 30, "b": 50}), 0, False, "held"),
    (_decision(0, {"a": 50, "b": 50}), _decision(11, {"a": 30, "b": 50}), 0, True,
     "weights moved: a 50->30"),
    # Symmetric: a move and its reverse pass alike (61 -> 50 once stranded a weight).
    (_decision(0, {"a": 50, "b": 50}), _decision(11, {"a": 61, "b": 50}), 0, True,
     "weights moved: a 50->61"),
    (_decision(0, {"a": 61, "b": 50}), _decision(11, {"a": 50, "b": 50}), 0, True,
     "weights moved: a 61->50"),
    (_decision(0, {"a": 50, "b": 50}), _decision(11, {"a": 59, "b": 50}), 0, False,
     "no weight moved"),
    (_decision(0, {"a": 59, "b": 50}), _decision(11, {"a": 50, "b": 50}), 0, False,
     "no weight moved"),
])
def test_hysteresis(applied: Decision | None, desired: Decision, last: float | None,
                    apply: bool, why: str) -> None:
    decision, reason = should_apply(applied, desired, last, ControllerSpec())
    assert decision is apply
    assert why in reason


def test_a_small_difference_from_the_target_is_applied_once_it_lasts() -> None:
    applied = _decision(0, {"a": 61, "b": 50})
    desired = _decision(100, {"a": 55, "b": 50})
    settings = ControllerSpec()
    assert not should_apply(applied, desired, 0, settings, differing_since=50)[0]
    apply, why = should_apply(applied, desired, 0, settings, differing_since=40)
    assert apply and why.startswith("weights brought to their targets after 60s apart: a 61->55")


def test_weights_and_targets_stay_in_nginx_range_on_every_path() -> None:
    # A replica far faster than the median aims high: its target stops at 100,
    # and the weight written while it is down or drained is a valid one too
    # (a target of 195 once crashed the controller when its replica was killed).
    signals = {r: fast(e2e=4.0) for r in R} | {"replica-1": fast(e2e=1.0)}
    fastest = decide(snap(signals), None, SETTINGS)
    assert fastest.replicas["replica-1"].target <= 100
    wound_up = Decision(at=NOW, replicas={r: ReplicaDecision(100, False, 195.0, "") for r in R})
    down = decide(snap(health={"replica-1": Health(healthy=False, consecutive_failures=2)},
                       overrides={"replica-2": Override(drained=True)}), wound_up, SETTINGS)
    assert down.replicas["replica-1"].down and down.replicas["replica-1"].weight == 100
    assert down.replicas["replica-2"].down and down.replicas["replica-2"].weight == 100
    assert all(1 <= w <= 100 for w in down.weights().values())


def test_a_replica_whose_warmup_is_in_the_window_is_not_judged_by_latency() -> None:
    # Its warm-up burst paid the kernels' compile: a P99 of seconds that is not its speed.
    signals = {r: fast() for r in R} | {"replica-3": fast(ttft=8.0, e2e=9.0)}
    blind = Snapshot(now=NOW, replicas=R, signals=signals, latency_blind=frozenset({"replica-3"}))
    decision = decide(blind, None, SETTINGS)
    assert set(decision.weights().values()) == {50}
    assert "warm-up is inside the latency window" in decision.replicas["replica-3"].reason
    seen = decide(snap(signals), None, SETTINGS)
    assert seen.weights()["replica-3"] == 1  # the same numbers read as an outlier


def test_the_policy_imports_no_template_engine_and_runs_no_process() -> None:
    """The policy is pure: importing it must not pull in rendering or process
    machinery (router.upstream is its only link to the gateway's file)."""
    probe = ("import sys, router.controller.policy; "
             "print(sorted(m for m in ('jinja2', 'subprocess') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    assert loaded == "[]"


def test_a_crash_looping_replica_is_out_with_the_supervisors_word_whatever_its_probes() -> None:
    looping = {"replica-3": "crash-looping: supervisord gave up (FATAL); fleet restart replica-3"}
    # A probe that passed just before the last crash: still out.
    snapshot = Snapshot(now=NOW, replicas=R, signals={r: fast() for r in R},
                        crash_looping=looping)
    decision = decide(snapshot, None, SETTINGS)
    assert decision.down() == frozenset({"replica-3"})
    assert decision.reasons()["replica-3"] == "out: " + looping["replica-3"]
    assert decision.weights()["replica-0"] == 50


def _pressured(pressures: dict[str, float]) -> dict[str, ReplicaSignals]:
    """Signals whose pressure is the given KV usage (nothing waiting)."""
    return {r: fast(kv=pressures.get(r, 0.2)) for r in R}


def _affine(signals: dict[str, ReplicaSignals]) -> Snapshot:
    return Snapshot(now=NOW, replicas=R, signals=signals, affinity=True)


def test_the_load_bound_sheds_keyed_traffic_from_a_replica_well_above_the_median() -> None:
    decision = decide(_affine(_pressured({"replica-2": 0.95})), None, SETTINGS)
    assert list(decision.shedding()) == ["replica-2"]
    assert "pressure 0.95 against the fleet's median 0.20" in decision.shedding()["replica-2"]
    assert "its keyed requests spill to least_conn" in decision.reasons()["replica-2"]
    assert decision.down() == frozenset()  # unkeyed traffic still reaches it
    # Without affinity the same pressure sheds nothing.
    plain = Snapshot(now=NOW, replicas=R, signals=_pressured({"replica-2": 0.95}))
    assert decide(plain, None, SETTINGS).shedding() == {}


def test_the_load_bound_has_hysteresis() -> None:
    shedding = decide(_affine(_pressured({"replica-2": 0.95})), None, SETTINGS)
    # 0.35 over the median: not enough to start, enough to keep shedding.
    between = _pressured({"replica-2": 0.55})
    assert decide(_affine(between), None, SETTINGS).shedding() == {}
    assert list(decide(_affine(between), shedding, SETTINGS).shedding()) == ["replica-2"]
    calm = _pressured({"replica-2": 0.40})
    assert decide(_affine(calm), shedding, SETTINGS).shedding() == {}


def test_only_replicas_above_the_median_shed_so_at_most_half() -> None:
    signals = _pressured({"replica-0": 2.0, "replica-1": 1.6, "replica-2": 1.3})
    signals["replica-3"] = fast(kv=0.0)
    # The median of 2.0, 1.6, 1.3 and 0 is 1.45: only replica-0 is 0.5 above it.
    assert list(decide(_affine(signals), None, SETTINGS).shedding()) == ["replica-0"]
    two = _pressured({"replica-0": 1.9, "replica-1": 1.9})
    assert sorted(decide(_affine(two), None, SETTINGS).shedding()) == ["replica-0", "replica-1"]


def test_shedding_applies_at_once_and_resuming_waits_for_the_interval() -> None:
    calm = decide(_affine(_pressured({})), None, SETTINGS)
    hot = decide(_affine(_pressured({"replica-2": 0.95})), calm, SETTINGS)
    apply, why = should_apply(calm, hot, last_weight_reload_at=NOW - 1, settings=SETTINGS)
    assert apply and why == "load bound: replica-2 spills its keyed requests"
    again = decide(_affine(_pressured({})), hot, SETTINGS)
    apply, why = should_apply(hot, again, last_weight_reload_at=NOW - 1, settings=SETTINGS)
    assert not apply and "replica-2 keeps its keyed requests again" in why
    apply, why = should_apply(hot, again, last_weight_reload_at=NOW - 60, settings=SETTINGS)
    assert apply and "replica-2 keeps its keyed requests again" in why
