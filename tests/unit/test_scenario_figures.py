"""The figures the scenarios compute from their samples (pure functions)."""

from __future__ import annotations

import pytest

from router.bench.scenario_kit import metric_sum, weight_changes
from router.bench.scenarios.budget import most_in_a_window
from router.bench.scenarios.reloads import imbalance


def test_weight_changes_count_reloads_after_the_warmup_only() -> None:
    samples = [{"t": 0.0, "weights": {"a": 50, "b": 50}},
               {"t": 1.0, "weights": {"a": 50, "b": 20}},   # during warm-up
               {"t": 5.0, "weights": {"a": 50, "b": 20}},
               {"t": 6.0, "weights": {}},                   # status not read: no sample
               {"t": 7.0, "weights": {"a": 50, "b": 50}},
               {"t": 8.0, "weights": {"a": 50, "b": 50}}]
    assert weight_changes(samples, after_s=5.0) == 1
    assert weight_changes(samples, after_s=0.0) == 2


def test_imbalance_is_max_over_min_and_counts_idle_replicas_apart() -> None:
    samples = [{"t": 0.0, "running": [9.0, 1.0]},
               {"t": 2.0, "running": [50.0, 50.0]},
               {"t": 3.0, "running": [60.0, 40.0]},
               {"t": 4.0, "running": [10.0, 0.0]}]
    figures = imbalance(samples, after_s=1.0)
    assert figures["samples"] == 2 and figures["samples_with_an_idle_replica"] == 1
    assert figures["mean"] == pytest.approx(1.25) and figures["max"] == pytest.approx(1.5)


def test_a_metric_sums_every_series_of_the_gauge() -> None:
    text = ('# HELP vllm:num_requests_running Number of requests in model execution batches.\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n')
    assert metric_sum(text, "vllm:num_requests_running") == 5.0


def test_the_busiest_minute_of_a_budgeted_key() -> None:
    done = [(1.0, 100), (30.0, 200), (61.0, 50), (62.0, 400), (200.0, 10)]
    # (30, 61, 62] hold 650; 1.0 left the window at 61.
    assert most_in_a_window(done, 60.0) == 650
    assert most_in_a_window([], 60.0) == 0
