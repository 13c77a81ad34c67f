"""The controller's loop on virtual time: probes and Prometheus behind
httpx.MockTransport, a fake actuator in place of nginx.

Covers what otherwise only a real gateway shows: signals aging while
Prometheus is away, reloads held by the minimum interval, admin overrides,
hysteresis, and the apply/record path when the gateway refuses a change.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from router.config.spec import ControllerSpec, PaceSpec
from router.controller.actuator import ApplyResult
from router.controller.admission import AdmissionInput, ShedBoard
from router.controller.inputs import PaceInput, PrometheusInput
from router.controller.pace import PaceProber
from router.controller.policy import Decision
from router.controller.public import public_status
from router.controller.service import Controller, Member
from router.controller.signals import PrometheusClient
from router.errors import ConfigWriteFailed, NginxReloadFailed, NginxTestFailed
from router.fleet_status import FleetStatus, PublicFleetStatus
from router.upstream import BASE_WEIGHT

# Straight to the target, no ramp and no outlier rule: each figure below is
# then the proportional rule alone (a 3x slower replica gets a third).
SETTINGS = ControllerSpec(slow_start_s=0.0, smoothing=1.0, outlier_latency_ratio=0.0,
                          min_reload_interval_s=10.0, max_signal_age_s=30.0)
MEMBERS = [Member(name, f"GPU-{name}", f"http://{name}") for name in ("a", "b", "c")]


class VirtualClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class VirtualTimer:
    """The loops' interval time, virtual: ``run_for`` lets every task run until
    it sleeps, then wakes the sleepers in deadline order, moving the clock."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.order = itertools.count()

    def monotonic(self) -> float:
        return self.clock.now

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.sleepers, (self.clock.now + seconds, next(self.order), woken))
        await woken

    async def run_for(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while True:
            for _ in range(50):
                await asyncio.sleep(0)
            if not self.sleepers or self.sleepers[0][0] > end:
                break
            deadline, _, woken = heapq.heappop(self.sleepers)
            self.clock.now = max(self.clock.now, deadline)
            if not woken.done():
                woken.set_result(None)
        self.clock.now = end


class FakeActuator:
    """Records what it is asked to apply; fails on demand like nginx would."""

    def __init__(self) -> None:
        self.applied: list[tuple[Decision, str]] = []
        self.fail_with: NginxReloadFailed | None = None

    async def apply(self, decision: Decision, why: str) -> ApplyResult:
        if self.fail_with is not None:
            raise self.fail_with
        self.applied.append((decision, why))
        return ApplyResult(version=f"v{len(self.applied)}", seconds=0.01)


class Fleet:
    """Replica /health and Prometheus' query API, as one mock transport."""

    def __init__(self) -> None:
        self.healthy = {m.name: True for m in MEMBERS}
        self.ttft = {m.name: 0.2 for m in MEMBERS}
        self.kv = {m.name: 0.1 for m in MEMBERS}
        self.prometheus_up = True

    def _vector(self, values: dict[str, float]) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "data": {
            "resultType": "vector",
            "result": [{"metric": {"replica": name}, "value": [0, str(value)]}
                       for name, value in values.items()]}})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200 if self.healthy[request.url.host] else 503)
        if not self.prometheus_up:
            raise httpx.ConnectError("connection refused", request=request)
        query = parse_qs(request.content.decode())["query"][0]
        names = [m.name for m in MEMBERS]
        if "time() - timestamp" in query:
            return self._vector({n: 1.0 for n in names})
        if "time_to_first_token" in query or "e2e_request_latency" in query:
            return self._vector(self.ttft)
        if "kv_cache_usage" in query:
            return self._vector(self.kv)
        if "num_requests" in query:
            return self._vector({n: 2.0 for n in names})
        if "request_success" in query:
            return self._vector({n: 1.0 for n in names})
        return self._vector({})


Scenario = Callable[[Controller, Fleet, FakeActuator, VirtualClock], Awaitable[None]]


def _run(scenario: Scenario, settings: ControllerSpec = SETTINGS, affinity: bool = False) -> None:
    async def main() -> None:
        fleet, actuator, clock = Fleet(), FakeActuator(), VirtualClock()
        transport = httpx.MockTransport(fleet)
        prometheus = PrometheusClient("http://prometheus", 1.0, transport=transport)
        controller = Controller(MEMBERS, settings, actuator,
                                [PrometheusInput(prometheus, settings, clock)],
                                transport=transport, clock=clock, affinity=affinity)
        try:
            await controller.prober.probe_all()
            await scenario(controller, fleet, actuator, clock)
        finally:
            await controller.prober.close()
            await prometheus.close()

    asyncio.run(main())


async def _tick(controller: Controller, clock: VirtualClock, seconds: float,
                trigger: str = "signals") -> Any:
    clock.advance(seconds)
    prometheus = controller.inputs[1]
    assert isinstance(prometheus, PrometheusInput)
    await prometheus.poll(controller.in_rotation())
    return await controller.evaluate(trigger)


def test_first_decision_applies_and_is_recorded() -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        record = await _tick(controller, clock, 0.0, "start")
        assert record.applied and record.why == "first configuration"
        assert record.weights == {"a": 50, "b": 50, "c": 50}
        assert len(actuator.applied) == 1 and controller.history[-1] is record
        assert controller.metrics.reloads.labels(result="success")._value.get() == 1

    _run(scenario)


def test_status_has_one_json_form_that_every_reader_parses_back() -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        await _tick(controller, clock, 0.0, "start")
        await controller.set_override("c", drained=True)
        await controller.set_override("b", pinned_weight=7, pin_expires_at=clock() + 60)
        status = controller.status()
        wire = json.loads(status.model_dump_json())
        assert FleetStatus.model_validate(wire) == status
        assert {r["name"] for r in wire["replicas"]} == {"a", "b", "c"}
        b = status.replica("b")
        assert b is not None and b.override.pinned_weight == 7 and b.signal("kv_usage") == 0.1
        assert status.last_decision is not None and status.last_decision.applied
        public = PublicFleetStatus.model_validate_json(
            public_status(status, "http://grafana").model_dump_json())
        # What the bench and the drills sample: a drained replica gets nothing new.
        assert public.routed_weights() == {"a": BASE_WEIGHT, "b": 7, "c": 0}
        assert public.dashboards and public.dashboards[0].url.startswith("http://grafana/d/")
        assert not status.all_in_rotation

    _run(scenario)


def test_the_admission_state_is_in_the_status_and_the_public_summary(tmp_path: Path) -> None:
    async def main() -> None:
        fleet, clock = Fleet(), VirtualClock()
        transport = httpx.MockTransport(fleet)
        admission = AdmissionInput(PrometheusClient("http://prometheus", 1.0, transport=transport),
                                   ShedBoard(tmp_path), {"batch": 1.0}, "20s", 2.0, clock)
        controller = Controller(MEMBERS, SETTINGS, FakeActuator(), [admission],
                                transport=transport, clock=clock)
        try:
            await controller.prober.probe_all()
            await admission.poll(controller.in_rotation())
            status = controller.status()
        finally:
            await controller.prober.close()
            await admission.close()
        # 6 waiting on 3 replicas finishing 1 a second each: 2 s > 1 s.
        assert status.admission is not None and status.admission.queue_wait_s == 2.0
        assert [(c.name, c.shed, c.retry_after_s) for c in status.admission.classes] == [
            ("batch", True, 2)]
        public = PublicFleetStatus.model_validate_json(
            public_status(status, None).model_dump_json())
        assert public.admission == status.admission

    asyncio.run(main())


def test_a_slow_replica_loses_weight_once_the_reload_interval_allows() -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        await _tick(controller, clock, 0.0, "start")
        fleet.ttft["b"] = 0.6
        held = await _tick(controller, clock, 2.0)
        assert not held.applied and held.why.startswith("held: b 50->17")
        assert controller.applied is not None and controller.applied.weights()["b"] == 50
        assert controller.desired is not None and controller.desired.weights()["b"] == 17
        applied = await _tick(controller, clock, 8.0)
        assert applied.applied and applied.weights["b"] == 17
        # Steady: the same evidence moves nothing further (hysteresis).
        steady = await _tick(controller, clock, 20.0)
        assert not steady.applied and steady.why.startswith("no weight moved")
        assert len(actuator.applied) == 2

    _run(scenario)


def test_signals_age_while_prometheus_is_away_and_weights_hold() -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        await _tick(controller, clock, 0.0, "start")
        fleet.ttft["b"] = 0.6
        await _tick(controller, clock, 10.0)
        fleet.prometheus_up = False
        record = await _tick(controller, clock, 40.0)
        assert controller.status().prometheus.error is not None
        assert controller.metrics.prometheus_up._value.get() == 0
        # Older than max_signal_age_s: no data, so b keeps its last target.
        assert record.reasons["b"] == "holding: no fresh signals"
        assert record.weights["b"] == 17 and not record.applied
        ages = controller.snapshot(clock()).signals["b"]
        assert ages.ttft_p99 is not None and ages.ttft_p99.age_s == pytest.approx(41.0)

    _run(scenario)


def test_health_flips_apply_at_once_despite_the_reload_interval() -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        await _tick(controller, clock, 0.0, "start")
        fleet.healthy["c"] = False
        records = []
        for _ in range(SETTINGS.fail_threshold):
            clock.advance(0.5)
            records.append(await controller.poll(controller.prober))
        # The first failure is no news; the one that flips it asks for a decision.
        assert records[:-1] == [None] * (SETTINGS.fail_threshold - 1)
        record = records[-1]
        assert record is not None and record.trigger == "health probes"
        assert record.applied and record.down == ["c"]
        assert record.why == "rotation change (out: c)"

    _run(scenario)


def test_admin_drain_and_pin_apply_at_once_and_a_pin_expires() -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        await _tick(controller, clock, 0.0, "start")
        drained = await controller.set_override("a", drained=True)
        assert drained.applied and drained.down == ["a"] and drained.reasons["a"] == \
            "drained by admin"
        clock.advance(1.0)
        pinned = await controller.set_override("b", pinned_weight=80,
                                               pin_expires_at=clock() + 60)
        assert pinned.applied and pinned.why == "admin pin changed for b"
        assert controller.applied is not None and controller.applied.replicas["b"].pinned
        expired = await _tick(controller, clock, 61.0)
        assert expired.applied and expired.why == "admin pin changed for b"
        assert expired.weights["b"] == 50

    _run(scenario)


@pytest.mark.parametrize(("error", "result"), [
    (NginxTestFailed("nginx -t rejected the new upstream.conf"), "nginx_test_failed"),
    (NginxReloadFailed("nginx did not run upstream.conf version x"), "reload_failed"),
    (ConfigWriteFailed("cannot write upstream.conf: No space left on device"), "write_failed"),
])
def test_a_refused_change_is_counted_kept_pending_and_retried(error: NginxReloadFailed,
                                                              result: str) -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        await _tick(controller, clock, 0.0, "start")
        actuator.fail_with = error
        fleet.healthy["a"] = False
        for _ in range(SETTINGS.fail_threshold):
            await controller.prober.probe_all()
        failed = await controller.evaluate("health probes")
        assert not failed.applied and failed.error == error.message
        assert controller.metrics.reloads.labels(result=result)._value.get() == 1
        assert controller.metrics.change_pending._value.get() == 1
        # The gateway still runs the last good decision; the next evaluation retries.
        assert controller.applied is not None and controller.applied.down() == frozenset()
        actuator.fail_with = None
        retried = await _tick(controller, clock, 2.0)
        assert retried.applied and retried.down == ["a"]
        assert controller.metrics.change_pending._value.get() == 0

    _run(scenario)


def test_with_affinity_a_pressured_replica_sheds_keyed_traffic_at_once_and_resumes_later(
        ) -> None:
    async def scenario(controller: Controller, fleet: Fleet, actuator: FakeActuator,
                       clock: VirtualClock) -> None:
        await _tick(controller, clock, 0.0, "start")
        fleet.kv["b"] = 0.9  # pressure 1.9 (KV 0.9, one waiting per running): 0.8 over
        shed = await _tick(controller, clock, 1.0)
        assert shed.applied and shed.why == "load bound: b spills its keyed requests"
        assert actuator.applied[-1][0].shedding().keys() == {"b"}
        assert controller.metrics.shedding.labels(replica="b")._value.get() == 1
        shedding = controller.status().replicas[1].shedding
        assert shedding is not None and shedding.startswith("pressure 1.90")
        fleet.kv["b"] = 0.1
        held = await _tick(controller, clock, 1.0)
        assert not held.applied and "b keeps its keyed requests again" in held.why
        back = await _tick(controller, clock, SETTINGS.min_reload_interval_s)
        assert back.applied and actuator.applied[-1][0].shedding() == {}
        assert controller.metrics.shedding.labels(replica="b")._value.get() == 0

    _run(scenario, affinity=True)


def _triggers(controller: Controller, since: float) -> list[tuple[float, str]]:
    return [(round(r.at - since, 2), r.trigger) for r in controller.history if r.at >= since]


def test_run_decides_on_signals_every_interval_and_on_a_health_flip_at_once() -> None:
    async def main() -> None:
        fleet, actuator, clock = Fleet(), FakeActuator(), VirtualClock()
        timer = VirtualTimer(clock)
        transport = httpx.MockTransport(fleet)
        prometheus = PrometheusClient("http://prometheus", 1.0, transport=transport)
        settings = SETTINGS.model_copy(update={"evaluate_interval_s": 2.0,
                                               "probe_interval_s": 0.5, "fail_threshold": 2})
        controller = Controller(MEMBERS, settings, actuator,
                                [PrometheusInput(prometheus, settings, clock)],
                                transport=transport, clock=clock, timer=timer)
        start = clock()
        running = asyncio.create_task(controller.run())
        await timer.run_for(9.0)
        seen = _triggers(controller, start)
        assert seen[0] == (0.0, "start")
        assert [at for at, why in seen if why == "signals"] == [2.0, 4.0, 6.0, 8.0]
        fleet.healthy["b"] = False
        flipped_at = clock()
        await timer.run_for(3.0)
        flips = [(at, r) for at, r in zip(_triggers(controller, flipped_at),
                                         [r for r in controller.history if r.at >= flipped_at],
                                         strict=True) if at[1] == "health probes"]
        # Two failed probes half a second apart: out within a second, not at the
        # next signals round.
        assert flips and flips[0][0][0] <= 1.0 and flips[0][1].down == ["b"]
        assert actuator.applied[-1][0].replicas["b"].down
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(main())


def _sse(texts: list[str]) -> bytes:
    chunks = [json.dumps({"choices": [{"text": text}]}) for text in texts]
    return "".join(f"data: {c}\n\n" for c in [*chunks, "[DONE]"]).encode()


def test_the_pace_loop_probes_every_replica_in_rotation_once_an_interval() -> None:
    async def main() -> None:
        fleet, actuator, clock = Fleet(), FakeActuator(), VirtualClock()
        timer = VirtualTimer(clock)
        probed: list[tuple[float, str]] = []

        def replicas(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/completions":
                probed.append((clock(), request.url.host))
                return httpx.Response(200, content=_sse(["a", "b", "c", "d"]))
            if request.url.path == "/metrics":
                if len(probed) <= len(MEMBERS):
                    raise RuntimeError("a bug in the first round")
                return httpx.Response(200, text="vllm:num_requests_running 1.0\n")
            return fleet(request)

        transport = httpx.MockTransport(replicas)
        pace_settings = PaceSpec(interval_s=1.5)
        pace = PaceProber({m.name: m.url for m in MEMBERS}, "m", pace_settings,
                          transport=transport, clock=clock)
        controller = Controller(MEMBERS, SETTINGS, actuator, [PaceInput(pace)],
                                transport=transport, clock=clock, timer=timer)
        start = clock()
        running = asyncio.create_task(controller.run())
        await timer.run_for(6.0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        rounds = sorted({round(at - start, 2) for at, _ in probed})
        assert rounds == [0.0, 1.5, 3.0, 4.5, 6.0]
        assert all(sorted(h for at, h in probed if round(at - start, 2) == r) == ["a", "b", "c"]
                   for r in rounds)
        # The first round (at start) broke and was logged; every later one asked for a
        # decision.
        assert [why for _, why in _triggers(controller, start)].count("pace") == len(rounds) - 1

    asyncio.run(main())
