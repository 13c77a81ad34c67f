"""The soak's pure parts: its event schedule, the gap a client saw, memory growth."""

from __future__ import annotations

from router.bench.soak import FULL, TINY, Event, gaps, memory_growth, schedule


def test_a_full_soak_schedules_what_the_issue_asks_for() -> None:
    events = schedule(FULL, FULL.minutes * 60)
    kinds = [e.kind for e in events]
    assert kinds.count("kill") == 5  # every 5 minutes, none at 0 or at the end
    assert kinds.count("weight") == 29
    assert kinds.count("key") == 2
    assert events == sorted(events, key=lambda e: e.at_s)
    assert Event(300.0, "kill", 0) in events and Event(600.0, "key", 0) in events


def test_a_tiny_soak_still_has_every_kind_of_event() -> None:
    assert {e.kind for e in schedule(TINY, TINY.minutes * 60)} == {"kill", "weight", "key"}


def test_the_gap_is_the_longest_time_between_two_answers_around_the_kill() -> None:
    probes = [(t / 100, True) for t in range(100)]  # every 10 ms for a second
    probes[50:60] = [(t / 100, False) for t in range(50, 60)]
    seen = gaps(probes, at_s=0.5, window_s=0.4)
    assert seen["failed"] == 10
    assert abs(seen["longest_gap_s"] - 0.11) < 1e-9
    assert gaps(probes, at_s=10.0, window_s=1.0) == {"probes": 0, "failed": 0,
                                                      "longest_gap_s": 0.0}


def test_memory_growth_compares_the_sample_nearest_the_start_with_the_last() -> None:
    samples = [{"t": float(t), "rss_mib": {"nginx": 10.0 + t, "gone": 5.0}} for t in range(10)]
    samples[-1]["rss_mib"].pop("gone")
    growth = memory_growth(samples, from_s=4.2)
    assert growth["nginx"] == 19.0 / 14.0 - 1.0
    assert growth["gone"] == -1.0
    assert memory_growth([], 1.0) == {}
