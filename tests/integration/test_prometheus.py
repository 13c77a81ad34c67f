"""Prometheus, run from the rendered prometheus.yml, scrapes every replica."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support.backend import Backend
from tests.support.harness import free_port_block, plan_for, prometheus, wait_for

pytestmark = pytest.mark.integration


def test_every_replica_is_scraped_with_its_labels(tmp_path: Path) -> None:
    base = free_port_block(2)
    plan = plan_for(tmp_path / "rt", 2, base)
    with Backend(base, "replica-0"), Backend(base + 1, "replica-1"), prometheus(plan) as running:
        url = f"http://127.0.0.1:{running.plan.spec.prometheus.port}/api/v1/query"

        def scraped() -> list[dict] | None:
            result = requests.get(url, params={"query": 'up{job="vllm"} == 1'},
                                  timeout=5).json()["data"]["result"]
            return result if len(result) == 2 else None

        result = wait_for(scraped, 30, "both replicas to be scraped", interval=0.5)
        labels = sorted((r["metric"]["replica"], r["metric"]["device"]) for r in result)
        assert labels == [("replica-0", "cpu:0"), ("replica-1", "cpu:1")]
        running_metric = requests.get(url, params={"query": "vllm:num_requests_running"},
                                      timeout=5).json()["data"]["result"]
        assert {r["metric"]["replica"] for r in running_metric} == {"replica-0", "replica-1"}
