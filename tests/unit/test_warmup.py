"""Warm-up before rotation: the policy keeps a warming replica out, and the
controller sends each replica that comes up one burst, then lets it in."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import httpx
import pytest

from router.config.plan import WarmupPlan
from router.config.spec import ControllerSpec, GatewaySpec
from router.controller.actuator import ApplyResult
from router.controller.policy import Decision, Health, Snapshot, decide
from router.controller.service import Controller, Member
from router.controller.warmup import warm_up
from router.render.upstream import render_upstream
from router.upstream import CONTROLLER_PROVENANCE, serving_addresses

SETTINGS = ControllerSpec()
PLAN = WarmupPlan(model="m", requests=8, max_tokens=4, timeout_s=5.0)


def test_a_pooling_model_is_warmed_with_embeddings() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def replica(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"data": []})

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(replica)) as client:
            plan = WarmupPlan(model="m", requests=2, max_tokens=4, timeout_s=5.0,
                              runner="pooling")
            result = await warm_up(client, "http://a", plan)
            assert result.failed == 0 and result.ok == 2

    asyncio.run(scenario())
    assert {path for path, _ in seen} == {"/v1/embeddings"}
    assert all(set(body) == {"model", "input"} for _, body in seen)


def test_a_warming_replica_is_out_with_its_reason() -> None:
    snapshot = Snapshot(now=0.0, replicas=("a", "b"), warming=frozenset({"b"}))
    decision = decide(snapshot, None, SETTINGS)
    assert decision.down() == {"b"}
    assert decision.replicas["b"].reason.startswith("warming up")


class FakeActuator:
    def __init__(self) -> None:
        self.applied: list[Decision] = []

    async def apply(self, decision: Decision, why: str) -> ApplyResult:
        self.applied.append(decision)
        return ApplyResult(version="v", seconds=0.0)


class Replicas:
    """Two replicas behind httpx.MockTransport: /health and chat completions."""

    def __init__(self) -> None:
        self.healthy = {"a": True, "b": True}
        self.chats: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        self.release = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host
        if request.url.path == "/health":
            return httpx.Response(200 if self.healthy[name] else 503)
        self.chats[name].append(json.loads(request.content))
        await self.release.wait()
        return httpx.Response(200, json={"choices": []})


def _controller(replicas: Replicas, warmup: WarmupPlan | None) -> tuple[Controller, FakeActuator]:
    actuator = FakeActuator()
    members = [Member("a", "GPU-a", "http://a"), Member("b", "GPU-b", "http://b")]
    controller = Controller(members, SETTINGS, actuator,  # type: ignore[arg-type]
                            warmup=warmup, transport=httpx.MockTransport(replicas))
    return controller, actuator


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_each_replica_that_comes_up_is_warmed_once_before_it_joins() -> None:
    async def scenario() -> None:
        replicas = Replicas()
        controller, actuator = _controller(replicas, PLAN)
        await controller.prober.probe_all()
        record = await controller.evaluate("start")
        await _settle()
        # Both burst at once; failing open keeps one of them serving meanwhile.
        assert set(controller.warming) == {"a", "b"}
        assert len(record.down) == 1
        assert record.reasons[record.down[0]].startswith("warming up")
        assert [len(replicas.chats[n]) for n in ("a", "b")] == [8, 8]
        body = replicas.chats["a"][0]
        assert body["max_tokens"] == 4 and body["ignore_eos"] is True and body["model"] == "m"
        assert len({c["messages"][0]["content"] for c in replicas.chats["a"]}) == 8

        replicas.release.set()
        while controller.warming:
            await asyncio.sleep(0.01)
        record = await controller.evaluate("warmed")
        assert record.down == [] and controller.warmed == {"a", "b"}
        assert controller.metrics.warmup_seconds.labels(replica="a")._value.get() > 0

        # A replica that falls and comes back is warmed again; the other is not.
        replicas.healthy["b"] = False
        for _ in range(SETTINGS.fail_threshold):
            await controller.prober.probe_all()
        record = await controller.evaluate("probes")
        assert record.down == ["b"] and controller.warmed == {"a"}
        replicas.healthy["b"] = True
        for _ in range(SETTINGS.recover_threshold):
            await controller.prober.probe_all()
        replicas.release.clear()
        record = await controller.evaluate("probes")
        await _settle()
        assert record.down == ["b"] and record.reasons["b"].startswith("warming up")
        assert [len(replicas.chats[n]) for n in ("a", "b")] == [8, 16]
        replicas.release.set()
        while controller.warming:
            await asyncio.sleep(0.01)
        assert (await controller.evaluate("warmed")).down == []
        await controller.prober.close()
        assert controller._warmup_client is not None
        await controller._warmup_client.aclose()

    asyncio.run(scenario())


def test_without_warmup_a_healthy_replica_joins_at_once() -> None:
    async def scenario() -> None:
        controller, _ = _controller(Replicas(), None)
        await controller.prober.probe_all()
        assert (await controller.evaluate("start")).down == []
        assert not controller.warming
        await controller.prober.close()

    asyncio.run(scenario())


def test_a_burst_that_outlives_its_timeout_is_abandoned_and_reported() -> None:
    async def scenario() -> None:
        replicas = Replicas()  # never released: every request hangs
        async with httpx.AsyncClient(transport=httpx.MockTransport(replicas)) as client:
            plan = WarmupPlan(model="m", requests=3, max_tokens=1, timeout_s=0.05)
            result = await warm_up(client, "http://a", plan)
        assert (result.ok, result.failed) == (0, 3)
        assert "3 unanswered after 0.05s" in result.summary()

    asyncio.run(scenario())


def test_health_defaults_mean_healthy_but_never_probed() -> None:
    # What track_warmups relies on: no warm-up before a replica has answered once.
    assert Health().healthy and Health().last_success is None


def test_latency_is_not_read_while_a_warmup_is_inside_the_window() -> None:
    async def scenario() -> None:
        replicas = Replicas()
        replicas.release.set()
        controller, _ = _controller(replicas, PLAN)
        controller.latency_memory_s = 65.0
        await controller.prober.probe_all()
        await controller.evaluate("start")
        while controller.warming:
            await asyncio.sleep(0.01)
        now = time.time()
        assert controller.snapshot(now).latency_blind == {"a", "b"}
        assert controller.snapshot(now + 66).latency_blind == frozenset()
        await controller.prober.close()
        assert controller._warmup_client is not None
        await controller._warmup_client.aclose()

    asyncio.run(scenario())


def test_a_control_loop_that_raised_ends_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from router.controller import api

    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(api.os, "kill", lambda pid, sig: killed.append((pid, sig)))

    async def scenario() -> None:
        async def broken() -> None:
            raise RuntimeError("a bug in the loop")

        async def cancelled() -> None:
            await asyncio.sleep(60)

        died = asyncio.create_task(broken())
        await asyncio.gather(died, return_exceptions=True)
        api._exit_if_loop_died(died)
        stopped = asyncio.create_task(cancelled())
        await asyncio.sleep(0)
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)
        api._exit_if_loop_died(stopped)

    asyncio.run(scenario())
    assert killed == [(os.getpid(), signal.SIGTERM)]


def test_under_run_a_warm_up_that_ends_puts_its_replica_in_at_once() -> None:
    async def scenario() -> None:
        replicas = Replicas()
        controller, actuator = _controller(replicas, PLAN)
        running = asyncio.create_task(controller.run())
        while len(controller.warming) < 2:
            await asyncio.sleep(0.01)
        replicas.release.set()
        while not actuator.applied or actuator.applied[-1].down():
            await asyncio.sleep(0.01)
        assert any(r.trigger == "warm-up" and r.down == [] for r in controller.history)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_restarted_controller_takes_what_its_predecessor_routed_to_as_warm() -> None:
    members = [Member("replica-0", "cpu:0", "http://127.0.0.1:8100"),
               Member("replica-1", "cpu:1", "http://127.0.0.1:8101")]
    written = render_upstream(GatewaySpec(), members, down=frozenset({"replica-1"}),
                              provenance=f"{CONTROLLER_PROVENANCE} at now: test").text
    assert serving_addresses(written) == {"127.0.0.1:8100"}
    # `fleet up`'s own file routes to every replica before any was warmed.
    assert serving_addresses(render_upstream(GatewaySpec(), members).text) == frozenset()
    assert serving_addresses("") == frozenset()
