"""The controller's inputs: the probe state machine and the Prometheus client."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from router.config.spec import ControllerSpec
from router.controller.probes import ProbeState, observe
from router.controller.signals import AGE_QUERY, PrometheusClient, queries
from router.errors import MetricsUnavailable

SETTINGS = ControllerSpec(fail_threshold=2, recover_threshold=2)


def _run(results: list[bool]) -> tuple[ProbeState, list[int]]:
    state, flips = ProbeState(), []
    for t, ok in enumerate(results):
        state, flipped = observe(state, ok, None if ok else "refused", float(t), SETTINGS)
        if flipped:
            flips.append(t)
    return state, flips


def test_two_failures_take_it_out_two_successes_bring_it_back() -> None:
    state, flips = _run([True, False, False, True, True])
    assert flips == [2, 4]
    assert state.health.healthy and state.health.recovered_at == 4.0  # slow start from here


def test_a_replica_that_never_answered_joins_without_slow_start() -> None:
    state, flips = _run([False, False, False, True, True])  # loading at `fleet up`
    assert flips == [1, 4]
    assert state.health.healthy and state.health.recovered_at is None


def test_a_single_failure_changes_nothing() -> None:
    state, flips = _run([True, False, True, True])
    assert flips == [] and state.health.healthy


def test_flapping_replica_stays_out_until_it_is_steady() -> None:
    state, flips = _run([False, False, True, False, True, False, True, True])
    assert flips == [1, 7]
    assert state.health.healthy


def _prometheus(handler: object) -> PrometheusClient:
    return PrometheusClient("http://prometheus", 1.0,
                            transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def _vector(values: dict[str, str]) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"replica": r}, "value": [1700000000.0, v]} for r, v in values.items()]}}


def test_signals_join_per_replica_with_age_and_nan() -> None:
    answers = {AGE_QUERY: {"replica-0": "1.5", "replica-1": "2"},
               queries("1m")["e2e_p99"]: {"replica-0": "0.8", "replica-1": "NaN"},
               queries("1m")["waiting"]: {"replica-0": "3"}}

    def handler(request: httpx.Request) -> httpx.Response:
        promql = httpx.QueryParams(request.content.decode())["query"]
        return httpx.Response(200, json=_vector(answers.get(promql, {})))

    async def run() -> dict:
        client = _prometheus(handler)
        try:
            return await client.signals("1m")
        finally:
            await client.close()

    signals = asyncio.run(run())
    assert signals["replica-0"].e2e_p99 is not None
    assert (signals["replica-0"].e2e_p99.value, signals["replica-0"].e2e_p99.age_s) == (0.8, 1.5)
    assert signals["replica-0"].waiting is not None and signals["replica-0"].waiting.value == 3
    nan = signals["replica-1"].e2e_p99
    assert nan is not None and math.isnan(nan.value) and not nan.usable(30)
    assert signals["replica-1"].waiting is None  # missing is missing, not zero


@pytest.mark.parametrize("answer", [
    httpx.Response(503, text="overloaded"),
    httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse"}),
])
def test_prometheus_errors_are_metrics_unavailable(answer: httpx.Response) -> None:
    async def run() -> None:
        client = _prometheus(lambda _request: answer)
        try:
            await client.query("up")
        finally:
            await client.close()

    with pytest.raises(MetricsUnavailable):
        asyncio.run(run())


def test_unreachable_prometheus_is_metrics_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def run() -> None:
        client = _prometheus(refuse)
        try:
            await client.query("up")
        finally:
            await client.close()

    with pytest.raises(MetricsUnavailable, match="did not answer"):
        asyncio.run(run())
