"""The token budget ledger: a sliding window per key from mtail's counters,
flags for nginx, and the key store's budgets; no servers, virtual time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from router.controller.budget import (
    BudgetBoard,
    BudgetInput,
    CounterDeltas,
    KeyBudget,
    KeyBudgets,
    KeyCounters,
    RecentCaps,
    TokenWindow,
    assess,
    parse_key_counters,
)
from router.disk.keys import UNLIMITED, KeyStore, save_store
from router.errors import MetricsUnavailable


def test_the_window_forgets_tokens_older_than_a_minute() -> None:
    window = TokenWindow(60)
    window.add("k", 100, at=0)
    window.add("k", 50, at=30)
    assert window.used("k", now=59) == 150
    assert window.used("k", now=60) == 50
    assert window.used("k", now=90) == 0
    assert window.used("other", now=0) == 0


def test_a_key_is_over_until_enough_tokens_age_out() -> None:
    window = TokenWindow(60)
    for at in (0, 10, 20):
        window.add("k", 400, at=at)
    states = assess(window, {"k": 1000}, now=25)
    assert states["k"] == KeyBudget("k", 1200, 1000, over_until=60)
    # Exactly the budget is over: the next request would pass it.
    assert assess(window, {"k": 1200}, now=25)["k"].over_until == 60
    # At 60 the first 400 is gone: 800 < 1000; no answers counted, no cap.
    assert assess(window, {"k": 1000}, now=60)["k"] == KeyBudget("k", 800, 1000, None)


@pytest.mark.parametrize(("used", "cap"), [
    # Answers of 10 tokens, a budget of 2,000: room for (2000 - used) / 10
    # answers, half of them in flight (each may end unseen and be followed).
    (100, None),   # room for 190 -> 95: more than the largest cap level (64)
    (1000, 48),    # room for 100 -> 50, snapped down
    (1900, 4),     # room for 10 -> 5 -> 4
    (1950, 2),     # room for 5 -> 2
    (1970, 1),     # room for 3 -> 1
])
def test_a_key_near_its_budget_may_have_what_its_minute_has_room_for(
        used: int, cap: int | None) -> None:
    window = TokenWindow(60)
    window.add("k", used, at=0, answers=used // 10)
    state = assess(window, {"k": 2000}, now=1)["k"]
    assert (state.over, state.cap) == (False, cap)


def test_cap_and_over_flags_are_apart(tmp_path: Path) -> None:
    board = BudgetBoard(tmp_path / "budget")
    board.clear()
    board.publish({"key-1": KeyBudget("key-1", 950, 1000, None, cap=4)})
    assert (tmp_path / "budget" / "cap" / "key-1").read_text() == "4\n"
    assert not (tmp_path / "budget" / "key-1").exists()
    board.publish({"key-1": KeyBudget("key-1", 1010, 1000, 1060.0)})
    assert not (tmp_path / "budget" / "cap" / "key-1").exists()
    assert (tmp_path / "budget" / "key-1").exists()
    board.clear()
    assert not any(p.is_file() for p in (tmp_path / "budget").rglob("*"))


def test_two_answers_are_charged_before_they_start() -> None:
    """A key whose answers average 100 tokens is over past 800 of 1,000: the
    next answer and one that may have ended unseen would pass its budget."""
    window = TokenWindow(60)
    for at in range(8):
        window.add("k", 100, at=at, answers=1)
    assert window.answer_size("k", now=10) == 100
    state = assess(window, {"k": 1000}, now=10)["k"]
    assert not state.over and state.cap == 1
    window.add("k", 5, at=9.5, answers=0)  # a stream cut before any token: no answer
    state = assess(window, {"k": 1000}, now=10)["k"]
    assert state.over and state.answer_size == 101
    # Room again once the first 100 age out (705 + 2 x 100.6 < 1000).
    assert state.over_until == 60


def test_counter_increments_skip_the_first_reading_and_survive_a_reset() -> None:
    deltas = CounterDeltas()
    assert deltas.update({"a": 500}) == {}
    assert deltas.update({"a": 620, "b": 30}) == {"a": 120, "b": 30}
    # mtail restarted: its counters began again at zero.
    assert deltas.update({"a": 40, "b": 30}) == {"a": 40, "b": 0}


def test_mtail_metrics_give_each_keys_tokens_and_answers() -> None:
    text = ("# HELP fleet_gateway_key_tokens_total defined at gateway.mtail\n"
            "# TYPE fleet_gateway_key_tokens_total counter\n"
            'fleet_gateway_key_tokens_total{key="key-0a1b"} 1234\n'
            'fleet_gateway_key_tokens_total{key="key-ffff"} 0\n'
            "# TYPE fleet_gateway_key_requests_total counter\n"
            'fleet_gateway_key_requests_total{key="key-0a1b",status="200"} 9\n'
            'fleet_gateway_key_requests_total{key="key-0a1b",status="429"} 4\n')
    assert parse_key_counters(text) == KeyCounters({"key-0a1b": 1234, "key-ffff": 0},
                                                   {"key-0a1b": 9})


def test_the_board_writes_a_flag_per_key_over_and_only_when_it_changes(tmp_path: Path) -> None:
    board = BudgetBoard(tmp_path / "budget")
    board.clear()
    over = KeyBudget("key-1", 1200, 1000, over_until=1060.5)
    board.publish({"key-1": over, "key-2": KeyBudget("key-2", 10, 1000, None)})
    flag = tmp_path / "budget" / "key-1"
    assert json.loads(flag.read_text()) == {"until": 1060.5, "used": 1200, "budget": 1000,
                                            "answer": 0}
    assert not (tmp_path / "budget" / "key-2").exists()
    stamp = flag.stat().st_mtime_ns
    board.publish({"key-1": over})
    assert flag.stat().st_mtime_ns == stamp
    # A key no longer budgeted (revoked, or its budget lifted) loses its flag.
    board.publish({})
    assert not flag.exists()


def test_a_start_clears_flags_a_stopped_ledger_left(tmp_path: Path) -> None:
    (tmp_path / "key-9").write_text("{}")
    (tmp_path / ".keep").write_text("")
    BudgetBoard(tmp_path).clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", "cap"]


def test_budgets_come_from_the_store_and_follow_its_changes(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    store, own = KeyStore().add("own", tokens_per_min=500)
    store, plain = store.add("plain")
    store, free = store.add("free", tokens_per_min=UNLIMITED)
    save_store(path, store)
    budgets = KeyBudgets(path, default=2000)
    assert budgets() == {own.id: 500, plain.id: 2000}
    assert budgets.names[free.id] == "free"
    store, _ = store.revoke("own")
    save_store(path, store)
    assert budgets() == {plain.id: 2000}
    assert KeyBudgets(tmp_path / "none.json", default=None)() == {}


class Counters:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.answers: dict[str, float] = {}
        self.down = False

    async def key_counters(self) -> KeyCounters:
        if self.down:
            raise MetricsUnavailable("mtail did not answer")
        return KeyCounters(dict(self.values), dict(self.answers))

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ledger(tmp_path: Path, budgets: dict[str, int],
            seeded: dict[str, float] | None = None) -> tuple[BudgetInput, Counters, Clock]:
    counters, clock = Counters(), Clock()

    async def seeder() -> dict[str, float]:
        if seeded is None:
            raise MetricsUnavailable("Prometheus did not answer")
        return seeded

    ledger = BudgetInput(counters, lambda: budgets, BudgetBoard(tmp_path), clock,
                         names=lambda: {"key-a": "team-a"}, seeder=seeder)
    return ledger, counters, clock


def test_the_ledger_flags_a_key_at_its_budget_and_lifts_it_as_tokens_age(
        tmp_path: Path) -> None:
    ledger, counters, clock = _ledger(tmp_path, {"key-a": 1000})
    counters.values, counters.answers = {"key-a": 5000}, {"key-a": 50}
    asyncio.run(ledger.poll())  # the baseline: tokens spent before are not this minute's
    assert not (tmp_path / "key-a").exists()
    for step in range(1, 4):
        clock.now += 5
        counters.values = {"key-a": 5000 + 300 * step}
        counters.answers = {"key-a": 50 + step}
        asyncio.run(ledger.poll())
    # 900 tokens in 3 answers at 1015: two more answers (300 each) would pass
    # 1,000. Room again once the first two 300s (at 1005, 1010) are a minute
    # old: 300 + 600 <= 1000.
    assert ledger.states["key-a"].over
    flag = json.loads((tmp_path / "key-a").read_text())
    assert flag == {"until": 1070.0, "used": 900, "budget": 1000, "answer": 300}
    view = ledger.view()
    assert view.keys[0].name == "team-a" and view.keys[0].retry_after_s == 55
    # mtail down: no new tokens read, and the window still ages.
    counters.down = True
    clock.now = 1070.0
    asyncio.run(ledger.poll())
    assert ledger.error == "mtail did not answer"
    assert not ledger.states["key-a"].over and not (tmp_path / "key-a").exists()


def test_a_start_takes_the_last_minute_from_prometheus(tmp_path: Path) -> None:
    ledger, counters, clock = _ledger(tmp_path, {"key-a": 1000}, seeded={"key-a": 1500})
    asyncio.run(ledger.poll())
    assert ledger.states["key-a"].over
    # Taken as spent half a window ago.
    assert ledger.states["key-a"].over_until == pytest.approx(clock.now + 30)


def test_no_prometheus_at_a_start_counts_from_zero(tmp_path: Path) -> None:
    ledger, counters, _clock = _ledger(tmp_path, {"key-a": 1000}, seeded=None)
    asyncio.run(ledger.poll())
    assert not ledger.states["key-a"].over


def test_what_a_higher_cap_let_in_still_counts_when_the_cap_comes_down() -> None:
    """Caps 12 then 6: up to 12 may still run, so room for 14 answers leaves
    2 to admit, not 7; with no cap remembered there is no bound."""
    caps = RecentCaps(memory_s=30)
    caps.record({"k": KeyBudget("k", 0, 1000, None)}, now=0)
    assert caps.running(now=1) == {}
    caps.record({"k": KeyBudget("k", 400, 1000, None, cap=12)}, now=1)
    caps.record({"k": KeyBudget("k", 700, 1000, None, cap=6)}, now=2)
    assert caps.running(now=3) == {"k": 12}
    assert caps.running(now=31.5) == {"k": 6}
    window = TokenWindow(60)
    window.add("k", 860, at=0, answers=86)  # answers of 10: room for 14
    assert assess(window, {"k": 1000}, now=3, running={"k": 12})["k"].cap == 2
    assert assess(window, {"k": 1000}, now=3)["k"].cap == 6
