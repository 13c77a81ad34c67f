"""Shedding from the fleet's saturation: the verdict per class, its Retry-After,
the flag files nginx tests, and the input that joins them to Prometheus."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from router.config.spec import FAIR_SHARE_FILE
from router.controller.admission import (
    MAX_RETRY_AFTER_S,
    AdmissionInput,
    ClassState,
    FairShare,
    FleetQueue,
    ShedBoard,
    assess,
    assess_fair_share,
    fair_share_level,
    finished_query,
    queue_rate_window_s,
    retry_after,
)
from router.controller.metrics import ControllerMetrics
from router.errors import MetricsUnavailable

LIMITS = {"default": 30.0, "batch": 10.0}


def queue(waiting: float, finished_per_s: float, age_s: float = 0.0) -> FleetQueue:
    return FleetQueue(waiting, finished_per_s, age_s)


@pytest.mark.parametrize(("waiting", "finished", "wait"), [
    (0, 0, 0.0),          # idle: nothing waits
    (0, 5, 0.0),
    (40, 4, 10.0),
    (3, 0, None),         # none finished yet: no drain rate
])
def test_the_queue_wait_is_waiting_over_the_finish_rate(
        waiting: float, finished: float, wait: float | None) -> None:
    assert queue(waiting, finished).wait_s == wait


@pytest.mark.parametrize(("wait", "shed_before", "shed"), [
    # (queue wait, classes shed after the last round, classes shed now)
    (4.0, set(), set()),
    (12.0, set(), {"batch"}),                  # above batch's 10 s
    (31.0, set(), {"batch", "default"}),       # the lowest first, then the next
    (7.0, {"batch"}, {"batch"}),               # below the limit, above the release (5 s)
    (4.9, {"batch"}, set()),                   # below the release: let back in
    (20.0, {"batch", "default"}, {"batch", "default"}),  # default's release is 15 s
    (12.0, {"batch", "default"}, {"batch"}),
])
def test_a_class_is_shed_above_its_limit_and_let_back_in_below_half_of_it(
        wait: float, shed_before: set[str], shed: set[str]) -> None:
    states = assess(queue(wait * 2, 2.0), LIMITS, frozenset(shed_before), max_age_s=10)
    assert {name for name, state in states.items() if state.shed} == shed
    for state in states.values():
        assert f"queue wait {wait:.1f}s" in state.reason


@pytest.mark.parametrize(("wait", "limit", "seconds"), [
    (12.0, 10.0, 7),       # to the release level, 5 s: 7 s at today's drain
    (5.5, 10.0, 1),        # already near it: one second, never zero
    (40.0, 30.0, 25),
    (500.0, 10.0, MAX_RETRY_AFTER_S),
])
def test_retry_after_is_the_drain_to_the_release_level(
        wait: float, limit: float, seconds: int) -> None:
    assert retry_after(wait, limit) == seconds


@pytest.mark.parametrize(("reading", "why"), [
    (None, "fail open"),
    (queue(1000, 1, age_s=30.0), "fail open"),
    # Just started on long requests, or stalled: nothing to judge a drain by.
    (queue(40, 0), "no drain rate"),
])
def test_no_fresh_reading_or_drain_rate_sheds_nothing(
        reading: FleetQueue | None, why: str) -> None:
    states = assess(reading, LIMITS, frozenset(LIMITS), max_age_s=10)
    assert not any(state.shed for state in states.values())
    assert all(why in state.reason for state in states.values())


def test_the_rate_window_covers_four_scrapes_and_twenty_seconds_at_least() -> None:
    assert queue_rate_window_s(1) == 20
    assert queue_rate_window_s(15) == 60
    assert "[20s]" in finished_query("20s")


def test_the_board_holds_a_file_per_shed_class_with_its_retry_after(tmp_path: Path) -> None:
    board = ShedBoard(tmp_path / "shed")
    board.clear()
    board.publish({"batch": ClassState("batch", 10, True, 7, "queue wait 12.0s"),
                   "default": ClassState("default", 30, False, 1, "queue wait 12.0s")})
    assert sorted(p.name for p in board.folder.iterdir()) == ["batch"]
    assert json.loads((board.folder / "batch").read_text()) == {
        "retry_after_s": 7, "reason": "queue wait 12.0s"}
    board.publish({"batch": ClassState("batch", 10, False, 1, "drained")})
    assert list(board.folder.iterdir()) == []


def test_a_start_clears_flags_a_stopped_controller_left(tmp_path: Path) -> None:
    (tmp_path / "batch").write_text("{}")
    ShedBoard(tmp_path).clear()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("slots", "keys", "level"), [
    (16, 1, None),     # one key alone: nobody to be fair to
    (16, 0, None),
    (16, 2, 8),
    (16, 3, 4),        # 5 snaps down to a level nginx has a zone for
    (16, 40, 1),       # never below one request
    (100, 2, 48),
])
def test_a_keys_share_is_the_slots_over_the_keys_snapped_down(
        slots: int, keys: int, level: int | None) -> None:
    assert fair_share_level(slots, keys) == level


@pytest.mark.parametrize(("held", "was", "keys", "slots", "per_key", "why"), [
    # (requests running and waiting, capped before, keys in use, slots, cap, reason)
    (12, False, 2, 16, None, "12 requests running and waiting on 16 slots: not full"),
    (16, False, 2, 16, 8, "on 16 slots over 2 keys in use"),
    (40, False, 3, 16, 4, "over 3 keys in use"),
    # Capped keys holding every slot between them leave no queue: still capped.
    (13, True, 2, 16, 8, "over 2 keys"),
    (11, True, 2, 16, None, "below 75% of the 16 the shares let in; no cap"),
    # 9 keys at 1 each let 9 of 16 in: held at 7, still capped.
    (7, True, 9, 16, 1, "over 9 keys"),
    (16, False, 1, 16, None, "1 key(s) in use: no cap"),
    (16, False, None, 16, None, "no count of key(s) in use"),
    (16, False, 2, 0, None, "slots (max_num_seqs) are unknown"),
])
def test_keys_are_capped_at_their_share_only_while_every_slot_is_taken(
        held: float, was: bool, keys: int | None, slots: int, per_key: int | None,
        why: str) -> None:
    reading = FleetQueue(waiting=max(0.0, held - 10), finished_per_s=4.0, age_s=0.0,
                         running=min(held, 10.0))
    share = assess_fair_share(reading, was, keys, slots, max_age_s=10)
    assert share.per_key == per_key
    assert why in share.reason


def test_no_fresh_reading_caps_no_key() -> None:
    stale = FleetQueue(waiting=40, finished_per_s=4, age_s=30.0, running=16)
    assert assess_fair_share(stale, True, 2, 16, max_age_s=10).per_key is None


def test_the_board_holds_the_share_while_there_is_one(tmp_path: Path) -> None:
    board = ShedBoard(tmp_path)
    board.publish_share(FairShare(8, 2, 16, "saturated"))
    assert (tmp_path / FAIR_SHARE_FILE).read_text() == "8\n"
    board.publish_share(FairShare(None, 2, 16, "drained"))
    assert not (tmp_path / FAIR_SHARE_FILE).exists()


class FakePrometheus:
    """Answers the queue queries per replica and the keys in use; fails on demand."""

    def __init__(self) -> None:
        self.waiting = {"replica-0": 30.0, "replica-1": 10.0, "replica-2": 500.0}
        self.finished = {"replica-0": 1.0, "replica-1": 1.0, "replica-2": 0.0}
        self.running = {"replica-0": 8.0, "replica-1": 8.0, "replica-2": 8.0}
        self.keys: float | None = 3.0
        self.down = False

    async def query(self, promql: str) -> dict[str, float]:
        if self.down:
            raise MetricsUnavailable("Prometheus did not answer: connection refused")
        if "num_requests_waiting" in promql:
            return self.waiting
        return self.running if "num_requests_running" in promql else self.finished

    async def query_total(self, promql: str) -> float | None:
        assert "fleet_gateway_key_requests_total" in promql
        return self.keys

    async def close(self) -> None:
        pass


def test_the_input_sheds_on_the_replicas_in_rotation_and_fails_open_when_blind(
        tmp_path: Path) -> None:
    source = FakePrometheus()
    now = [1000.0]
    metrics = ControllerMetrics()
    admission = AdmissionInput(source, ShedBoard(tmp_path), LIMITS, "20s", interval_s=2.0,
                               clock=lambda: now[0], metrics=metrics)

    def poll() -> bool:
        return asyncio.run(admission.poll(["replica-0", "replica-1"]))

    # replica-2 is out of rotation: its queue is not one a new request joins.
    assert poll() is False  # never a weight decision
    assert admission.queue == FleetQueue(40.0, 2.0, 0.0, running=16.0)
    assert admission.shed == {"batch"}
    assert (tmp_path / "batch").exists()
    assert metrics.class_shed.labels(priority_class="batch")._value.get() == 1
    assert metrics.queue_wait._value.get() == 20.0
    view = admission.view()
    assert (view.queue_wait_s, view.waiting, view.error) == (20.0, 40.0, None)
    # Prometheus goes away: the last reading ages, and three rounds on it
    # sheds nothing.
    source.down = True
    now[0] += 2.0
    poll()
    assert admission.shed == {"batch"}
    now[0] += 5.0
    poll()
    assert admission.shed == frozenset()
    assert not (tmp_path / "batch").exists()
    assert admission.view().error == "Prometheus did not answer: connection refused"


def test_a_flag_that_cannot_be_written_keeps_the_last_verdict(tmp_path: Path) -> None:
    source = FakePrometheus()
    board = ShedBoard(tmp_path / "not-a-folder")
    admission = AdmissionInput(source, board, LIMITS, "20s", interval_s=2.0,
                               clock=lambda: 1000.0)
    board.folder.rmdir()
    board.folder.write_text("a file where the folder should be")
    asyncio.run(admission.poll(["replica-0", "replica-1"]))
    assert admission.shed == frozenset()


def test_the_input_caps_keys_from_the_slots_in_rotation(tmp_path: Path) -> None:
    source = FakePrometheus()
    metrics = ControllerMetrics()
    admission = AdmissionInput(source, ShedBoard(tmp_path), {}, "20s", interval_s=2.0,
                               clock=lambda: 1000.0, metrics=metrics,
                               fair_slots={"replica-0": 8, "replica-1": 8, "replica-2": 8})
    # 56 held on the 16 slots in rotation, over 3 keys: 5, snapped to 4.
    asyncio.run(admission.poll(["replica-0", "replica-1"]))
    assert admission.share is not None and admission.share.per_key == 4
    assert (tmp_path / FAIR_SHARE_FILE).read_text() == "4\n"
    assert metrics.fair_share._value.get() == 4
    view = admission.view().fair_share
    assert view is not None and (view.per_key, view.keys_in_use, view.slots) == (4, 3, 16)
    # No key logged lately (an empty answer): nobody to share with.
    source.keys = None
    asyncio.run(admission.poll(["replica-0", "replica-1"]))
    assert admission.share.per_key is None
    assert not (tmp_path / FAIR_SHARE_FILE).exists()
