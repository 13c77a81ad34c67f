"""The simulator's metric families against real vLLM expositions on file: the
CPU build (0.32.0, max_model_len 2048) and the GPU build (0.26.0 on an H200,
max_model_len 8192, captured under load by docs/benchmarks/gpu-h200)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from router.sim.metrics import NOT_SIMULATED, VllmMetrics
from tests.support.fidelity import metric_families

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "vllm-cpu-0.32.0.metrics.txt"
GPU_FIXTURE = FIXTURES / "vllm-gpu-0.26.0.metrics.txt"
REAL = [pytest.param(FIXTURE, 2048, id="cpu-0.32.0"),
        pytest.param(GPU_FIXTURE, 8192, id="gpu-0.26.0")]


@pytest.mark.parametrize(("fixture", "max_model_len"), REAL)
def test_same_families_types_and_labels_as_real_vllm(fixture: Path, max_model_len: int) -> None:
    real = metric_families(fixture.read_text())
    sim = metric_families(generate_latest(VllmMetrics("m", max_model_len).registry).decode())
    expected = {name: kind for name, kind in real.items() if name not in NOT_SIMULATED}
    assert sim == expected


def test_every_allow_listed_family_really_exists_in_vllm() -> None:
    real = metric_families(FIXTURE.read_text())
    assert set(NOT_SIMULATED) <= set(real), set(NOT_SIMULATED) - set(real)


@pytest.mark.parametrize(("fixture", "max_model_len"), REAL)
def test_token_histogram_buckets_follow_max_model_len(fixture: Path, max_model_len: int) -> None:
    text = generate_latest(VllmMetrics("m", max_model_len).registry).decode()
    real = fixture.read_text()
    for family in ("vllm:request_prompt_tokens_bucket", "vllm:e2e_request_latency_seconds_bucket",
                   "vllm:time_to_first_token_seconds_bucket"):
        bounds = [line.split('le="')[1].split('"')[0] for line in text.splitlines()
                  if line.startswith(family)]
        real_bounds = [line.split('le="')[1].split('"')[0] for line in real.splitlines()
                       if line.startswith(family)]
        assert bounds == real_bounds, family
