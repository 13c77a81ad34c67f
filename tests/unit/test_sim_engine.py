"""The latency model, driven on a virtual clock: no test here waits."""

from __future__ import annotations

import asyncio

import pytest

from router.sim.engine import Engine, LatencyModel
from router.sim.metrics import VllmMetrics


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.steps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.steps.append(seconds)
        self.now += seconds


def _engine(vt: VirtualTime, **kw: float) -> Engine:
    settings = {"max_num_seqs": 4, "kv_capacity_tokens": 100_000, "speed": 1.0, "seed": 7,
                "mean_output_tokens": 16, **kw}
    return Engine(VllmMetrics("m", 8192), model=LatencyModel(), clock=vt.clock, sleep=vt.sleep,
                  **settings)  # type: ignore[arg-type]


def _sample(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        name, {"engine": "0", "model_name": "m", **labels})
    assert value is not None, name
    return value


async def _drain(engine: Engine) -> None:
    while engine.running or engine.waiting:
        await engine.step()


@pytest.mark.parametrize(("submitted", "waiting"), [(3, 0), (4, 0), (5, 1), (9, 5)])
def test_queueing_starts_exactly_above_max_num_seqs(submitted: int, waiting: int) -> None:
    async def scenario() -> None:
        vt = VirtualTime()
        engine = _engine(vt)
        for i in range(submitted):
            engine.submit(f"p{i}", 10, 8, ignore_eos=True, stream=False)
        await engine.step()
        assert len(engine.running) == min(submitted, 4)
        assert len(engine.waiting) == waiting
        assert _sample(engine, "vllm:num_requests_waiting") == waiting
        assert _sample(engine, "vllm:num_requests_running") == min(submitted, 4)
        await _drain(engine)

    asyncio.run(scenario())


@pytest.mark.parametrize("speed", [0.5, 0.25])
def test_slower_replica_takes_proportionally_longer(speed: float) -> None:
    async def run(at: float) -> float:
        vt = VirtualTime()
        engine = _engine(vt, speed=at)
        requests = [engine.submit(f"p{i}", 50, 20, ignore_eos=True, stream=False)
                    for i in range(6)]
        await _drain(engine)
        assert all(r.done.done() for r in requests)
        return vt.now

    full, slow = asyncio.run(run(1.0)), asyncio.run(run(speed))
    assert slow == pytest.approx(full / speed)


def test_step_time_grows_with_the_batch() -> None:
    model = LatencyModel()
    assert model.step_time(1, 0, 1.0) < model.step_time(8, 0, 1.0) < model.step_time(64, 0, 1.0)
    assert model.step_time(8, 1000, 1.0) > model.step_time(8, 0, 1.0)


def test_output_is_deterministic_and_counted_consistently() -> None:
    async def run() -> tuple[list[str], Engine]:
        vt = VirtualTime()
        engine = _engine(vt)
        requests = [engine.submit(f"prompt {i}", 12, 64, ignore_eos=False, stream=False)
                    for i in range(10)]
        await _drain(engine)
        return [r.text() for r in requests], engine

    texts_a, engine = asyncio.run(run())
    texts_b, _ = asyncio.run(run())
    assert texts_a == texts_b
    requests_done = _sample(engine, "vllm:request_success_total", finished_reason="stop") + \
        _sample(engine, "vllm:request_success_total", finished_reason="length")
    assert requests_done == 10
    generated = sum(len(t.split(" ")) for t in texts_a)
    assert _sample(engine, "vllm:generation_tokens_total") == generated
    assert _sample(engine, "vllm:prompt_tokens_total") == 10 * 12
    assert _sample(engine, "vllm:e2e_request_latency_seconds_count") == 10


def test_ignore_eos_runs_to_max_tokens_and_says_length() -> None:
    async def run() -> None:
        vt = VirtualTime()
        engine = _engine(vt, mean_output_tokens=1)
        request = engine.submit("p", 5, 30, ignore_eos=True, stream=True)
        await _drain(engine)
        assert len(request.tokens) == 30 and request.finish_reason == "length"
        streamed = []
        assert request.stream is not None
        while (token := request.stream.get_nowait()) is not None:
            streamed.append(token)
        assert "".join(streamed) == request.text()

    asyncio.run(run())


def test_kv_capacity_limits_admission_and_drives_usage() -> None:
    async def run() -> None:
        vt = VirtualTime()
        engine = _engine(vt, kv_capacity_tokens=250)
        for i in range(3):
            engine.submit(f"p{i}", 100, 10, ignore_eos=True, stream=False)
        await engine.step()
        assert len(engine.running) == 2 and len(engine.waiting) == 1
        usage = _sample(engine, "vllm:kv_cache_usage_perc")
        assert usage == pytest.approx((2 * 101) / 250)
        await _drain(engine)
        assert _sample(engine, "vllm:kv_cache_usage_perc") == 0

    asyncio.run(run())


def test_ttft_includes_queueing() -> None:
    async def run() -> None:
        vt = VirtualTime()
        engine = _engine(vt, max_num_seqs=1)
        first = engine.submit("a", 10, 5, ignore_eos=True, stream=False)
        second = engine.submit("b", 10, 5, ignore_eos=True, stream=False)
        await _drain(engine)
        assert first.first_token is not None and second.first_token is not None
        assert second.admitted == first.last_token  # admitted once the first one left
        assert second.first_token - second.arrival > first.first_token - first.arrival

    asyncio.run(run())


def test_engine_death_fails_everything_in_flight() -> None:
    async def run() -> None:
        vt = VirtualTime()
        engine = _engine(vt)
        requests = [engine.submit(f"p{i}", 10, 50, ignore_eos=True, stream=False)
                    for i in range(6)]
        await engine.step()
        engine.kill()
        assert all(r.done.done() and r.error is not None for r in requests)
        assert _sample(engine, "vllm:request_success_total", finished_reason="error") == 6
        with pytest.raises(Exception, match="dead"):
            engine.submit("late", 1, 1, ignore_eos=True, stream=False)

    asyncio.run(run())


def test_a_profile_fills_the_latency_model_and_explicit_values_win() -> None:
    from pydantic import ValidationError

    from router.config.sim import PROFILES, SimSettings

    profiled = SimSettings(profile="h200-qwen2.5-7b-awq")
    for key, value in PROFILES["h200-qwen2.5-7b-awq"].items():
        assert getattr(profiled, key) == value
    assert SimSettings(profile="h200-qwen2.5-7b-awq", speed=0.5, max_num_seqs=64).max_num_seqs == 64
    # What `fleet up` passes to each simulated replica survives the trip.
    assert SimSettings.model_validate_json(profiled.model_dump_json()) == profiled
    with pytest.raises(ValidationError, match="profiles are: h200-qwen2.5-7b-awq"):
        SimSettings(profile="a100")


SYSTEM_PROMPT = "You answer questions about the fleet's tea shop. " * 160  # 2,000 tokens


def _prefill_steps(prefix_caching: bool = True, capacity: int = 100_000,
                   prompts: tuple[str, ...] = ()) -> tuple[list[float], Engine]:
    """The first step of each request, one after another: its prefill and one token."""
    async def scenario() -> tuple[list[float], Engine]:
        vt = VirtualTime()
        engine = _engine(vt, kv_capacity_tokens=capacity)
        if not prefix_caching:
            engine.prefix_cache = None
        firsts = []
        for prompt in prompts:
            engine.submit(prompt, max(1, len(prompt) // 4), max_tokens=1, ignore_eos=True,
                          stream=False)
            await engine.step()
            firsts.append(vt.steps[-1])
        return firsts, engine

    return asyncio.run(scenario())


def test_a_shared_prefix_is_prefilled_once() -> None:
    turns = (SYSTEM_PROMPT + "first question", SYSTEM_PROMPT + "another question")
    cached, engine = _prefill_steps(prompts=turns)
    assert cached[1] < cached[0] / 4  # only the part after the shared blocks is prefilled
    queries = _sample(engine, "vllm:prefix_cache_queries_total")
    hits = _sample(engine, "vllm:prefix_cache_hits_total")
    assert hits >= 1_900 and queries == sum(len(t) // 4 for t in turns)
    uncached, plain = _prefill_steps(prefix_caching=False, prompts=turns)
    assert uncached[1] == pytest.approx(uncached[0], rel=0.01)
    assert _sample(plain, "vllm:prefix_cache_hits_total") == 0


def test_a_prompt_that_differs_early_shares_only_the_blocks_before() -> None:
    first = SYSTEM_PROMPT
    changed = "X" + SYSTEM_PROMPT[1:]
    _steps, engine = _prefill_steps(prompts=(first, changed))
    assert _sample(engine, "vllm:prefix_cache_hits_total") == 0


def test_least_recently_used_blocks_are_evicted_when_the_cache_is_full() -> None:
    # Room for about two of these prompts' blocks: the third evicts the first.
    prompts = tuple(f"tenant {i}: " + SYSTEM_PROMPT for i in range(3))
    _steps, engine = _prefill_steps(capacity=4_200, prompts=(*prompts, prompts[0]))
    assert engine.prefix_cache is not None and len(engine.prefix_cache) <= 4_200 // 16
    assert _sample(engine, "vllm:prefix_cache_hits_total") == 0
    _steps, roomy = _prefill_steps(prompts=(*prompts, prompts[0]))
    assert _sample(roomy, "vllm:prefix_cache_hits_total") >= 1_900


@pytest.mark.parametrize(("by_priority", "order"), [(False, ["running", "late", "urgent"]),
                                                    (True, ["running", "urgent", "late"])])
def test_the_priority_policy_reorders_the_waiting_queue_only(by_priority: bool,
                                                             order: list[str]) -> None:
    # What vLLM 0.32's --scheduling-policy priority did with one slot
    # (docs/overload.md): a running request of priority 10 is not preempted;
    # of the two behind it, priority 0 goes before the earlier priority 10.
    async def run() -> list[str]:
        vt = VirtualTime()
        engine = _engine(vt, max_num_seqs=1)
        engine.by_priority = by_priority
        names = {}
        names[id(engine.submit("running", 5, 30, ignore_eos=True, stream=False,
                               priority=10))] = "running"
        await engine.step()
        names[id(engine.submit("late", 5, 5, ignore_eos=True, stream=False,
                               priority=10))] = "late"
        names[id(engine.submit("urgent", 5, 5, ignore_eos=True, stream=False,
                               priority=0))] = "urgent"
        finished: list[str] = []
        while engine.running or engine.waiting:
            before = {id(r) for r in engine.running}
            await engine.step()
            finished += [names[i] for i in before if i not in {id(r) for r in engine.running}]
        return finished

    assert asyncio.run(run()) == order


def test_equal_priorities_keep_their_arrival_order() -> None:
    async def run() -> list[str]:
        vt = VirtualTime()
        engine = _engine(vt, max_num_seqs=1)
        engine.by_priority = True
        submitted = {}
        for i, level in enumerate([5, 1, 5, 1, 0]):
            request = engine.submit(f"p{i}", 5, 5, ignore_eos=True, stream=False, priority=level)
            submitted[request.request_id] = f"p{i}"
        return [submitted[r.request_id] for r in engine.waiting]

    assert asyncio.run(run()) == ["p4", "p1", "p3", "p0", "p2"]
