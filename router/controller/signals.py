"""Per-replica signals from Prometheus's HTTP API, each with its age.

Every query groups by the `replica` label that prometheus.yml puts on each
scrape target. A replica whose series are missing gets no sample (not zero);
histogram_quantile over an empty window gives NaN, which the policy treats as
no data. The age of a replica's samples is the age of its last successful
scrape, so a replica Prometheus cannot reach reads as stale, not as fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

from router.controller.policy import ReplicaSignals, Sample
from router.errors import MetricsUnavailable

JOB = 'job="vllm"'
# Requests each replica queues and runs (also the admission input's queue).
WAITING_QUERY = f"sum by (replica) (vllm:num_requests_waiting{{{JOB}}})"
RUNNING_QUERY = f"sum by (replica) (vllm:num_requests_running{{{JOB}}})"


def queries(window: str) -> dict[str, str]:
    """The PromQL behind each signal, keyed by ReplicaSignals field."""
    def p99(histogram: str) -> str:
        return (f"histogram_quantile(0.99, sum by (le, replica) "
                f"(rate(vllm:{histogram}_bucket{{{JOB}}}[{window}])))")

    return {
        "ttft_p99": p99("time_to_first_token_seconds"),
        "e2e_p99": p99("e2e_request_latency_seconds"),
        "waiting": WAITING_QUERY,
        "running": RUNNING_QUERY,
        "kv_usage": f"max by (replica) (vllm:kv_cache_usage_perc{{{JOB}}})",
        # From the GPU exporter when it runs; absent otherwise.
        "gpu_util": "max by (replica) (fleet_gpu_utilization_percent)",
        "gpu_memory_used": ("max by (replica) (fleet_gpu_memory_used_bytes"
                            " / fleet_gpu_memory_total_bytes)"),
        "up": f"max by (replica) (up{{{JOB}}})",
        # NaN while a replica has no prompts in the window: no sample.
        "prefix_hit_rate": (f"sum by (replica) (rate(vllm:prefix_cache_hits_total{{{JOB}}}"
                            f"[{window}])) / sum by (replica) (rate("
                            f"vllm:prefix_cache_queries_total{{{JOB}}}[{window}]))"),
    }


# Seconds since each replica's last successful scrape.
AGE_QUERY = f"max by (replica) (time() - timestamp(vllm:num_requests_running{{{JOB}}}))"


class PrometheusClient:
    """A small async client for instant queries, with a hard timeout."""

    def __init__(self, base_url: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s,
                                         transport=transport)

    async def close(self) -> None:
        await self._client.aclose()

    async def query(self, promql: str, label: str = "replica") -> dict[str, float]:
        """An instant query -> {the series' ``label``: value}; raises MetricsUnavailable."""
        values = {}
        for item in await self._results(promql):
            name = item["metric"].get(label)
            if name is not None:
                # The API encodes NaN and infinities as strings; float() reads them.
                values[name] = float(item["value"][1])
        return values

    async def _results(self, promql: str) -> list[dict[str, Any]]:
        try:
            response = await self._client.post("/api/v1/query", data={"query": promql})
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus did not answer: {exc}") from exc
        if body.get("status") != "success":
            raise MetricsUnavailable(
                f"Prometheus refused a query ({body.get('errorType')}: {body.get('error')})")
        results: list[dict[str, Any]] = body["data"]["result"]
        return results

    async def query_total(self, promql: str) -> float | None:
        """An instant query whose answer is one number; None when it is empty."""
        values = await self._results(promql)
        return None if not values else sum(float(item["value"][1]) for item in values)

    async def signals(self, window: str) -> dict[str, ReplicaSignals]:
        ages = await self.query(AGE_QUERY)
        results = {name: await self.query(promql) for name, promql in queries(window).items()}
        return build_signals(results, ages)


def build_signals(results: Mapping[str, Mapping[str, float]],
                  ages: Mapping[str, float]) -> dict[str, ReplicaSignals]:
    """Join query results per replica; a replica with no age is infinitely stale."""
    replicas = {r for values in results.values() for r in values} | set(ages)
    out = {}
    for replica in replicas:
        age = ages.get(replica, math.inf)
        fields = {name: Sample(values[replica], age)
                  for name, values in results.items() if replica in values}
        out[replica] = ReplicaSignals(**fields)
    return out
