"""A continuous-batching engine model: what a vLLM replica does with time.

The engine runs in steps, like vLLM's scheduler:
1. admit waiting requests in FIFO order (``scheduling_policy="priority"``:
   lowest ``priority`` first, ties in arrival order, as vLLM's
   ``--scheduling-policy priority`` orders its waiting queue) while fewer
   than ``max_num_seqs`` run and their prompts fit in the free KV cache;
2. run one step whose duration is
   ``(decode_step_s + decode_s_per_seq * running + prefill_s_per_token *
   prompt tokens admitted this step) / speed``, where a prompt's tokens
   found in the prefix cache (router.sim.prefix_cache) are not prefilled;
3. every running request gets one token; a request admitted in this step
   gets its first token (its prefill ran in the step).

So queueing appears exactly when more than ``max_num_seqs`` requests are in
flight, a bigger batch makes every token slower, and a replica at speed 0.5
takes twice as long for the same work. The clock and the sleep are injected,
so unit tests drive the model without waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Histogram

from router.sim.metrics import VllmMetrics
from router.sim.prefix_cache import BLOCK_TOKENS, PrefixCache, block_hashes

WORDS = (
    "the", "fleet", "serves", "tokens", "quickly", "and", "every", "replica", "answers", "with",
    "care", "while", "gateway", "balances", "load", "across", "graphics", "cards", "model",
    "weights", "stream", "through", "nginx", "to", "clients", "who", "see", "nothing", "odd",
    "latency", "stays", "low", "queues", "drain", "steady", "bright", "calm", "river", "stone",
)


@dataclass(frozen=True)
class LatencyModel:
    """Step-time constants of a replica at speed 1.0."""

    decode_step_s: float = 0.010
    decode_s_per_seq: float = 0.0002
    prefill_s_per_token: float = 0.00002

    def step_time(self, running: int, prefill_tokens: int, speed: float) -> float:
        work = (self.decode_step_s + self.decode_s_per_seq * running
                + self.prefill_s_per_token * prefill_tokens)
        return work / speed


class EngineDead(Exception):
    """The engine died; requests in flight end with an error."""


@dataclass(eq=False)
class SimRequest:
    """One generation request moving through the engine."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    output_tokens: int  # where it stops: max_tokens, or earlier at a simulated EOS
    rng: random.Random
    stream: asyncio.Queue[str | None] | None
    done: asyncio.Future[None]
    arrival: float
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    tokens: list[str] = field(default_factory=list)
    error: BaseException | None = None
    # The prompt's KV blocks, and how many of its tokens the prefix cache held.
    block_hashes: tuple[int, ...] = ()
    cached_tokens: int = 0
    # vLLM's request priority: lower is admitted first under the priority policy.
    priority: int = 0

    @property
    def finish_reason(self) -> str:
        return "length" if len(self.tokens) >= self.max_tokens else "stop"

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + len(self.tokens)

    def text(self) -> str:
        return "".join(self.tokens)


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of the same value in one update.

    Every request in a step sees the same inter-token gap; observing them one
    by one costs a lock round-trip each, which at hundreds of streams is most
    of the simulator's CPU.
    """
    if count <= 0:
        return
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None:
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    for index, bound in enumerate(bounds):
        if value <= bound:
            buckets[index].inc(count)
            break


class Engine:
    """A continuous-batching scheduler over simulated time steps."""

    def __init__(self, metrics: VllmMetrics, *, max_num_seqs: int, kv_capacity_tokens: int,
                 speed: float, model: LatencyModel, seed: int, mean_output_tokens: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 prefix_caching: bool = True, by_priority: bool = False) -> None:
        self.metrics = metrics
        self.max_num_seqs = max_num_seqs
        self.kv_capacity_tokens = kv_capacity_tokens
        self.speed = speed
        self.model = model
        self.seed = seed
        self.mean_output_tokens = mean_output_tokens
        self.clock = clock
        self.sleep = sleep
        self.waiting: deque[SimRequest] = deque()
        self.by_priority = by_priority
        self.running: list[SimRequest] = []
        self.paused = False  # a hung engine makes no progress
        self.dead = False
        self._wake = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()
        self._task: asyncio.Task[None] | None = None
        self._counter = 0
        self.prefix_cache = (PrefixCache(kv_capacity_tokens // BLOCK_TOKENS)
                             if prefix_caching else None)

    # --- requests -------------------------------------------------------
    def submit(self, prompt: str, prompt_tokens: int, max_tokens: int, ignore_eos: bool,
               stream: bool, priority: int = 0) -> SimRequest:
        if self.dead:
            raise EngineDead("engine is dead")
        self._counter += 1
        # Deterministic output for a given seed and prompt.
        rng = random.Random(f"{self.seed}:{prompt}")
        output = max_tokens if ignore_eos else min(
            max_tokens, max(1, int(rng.expovariate(1 / self.mean_output_tokens)) + 1))
        loop = asyncio.get_running_loop()
        request = SimRequest(
            request_id=f"{self._counter:x}", prompt_tokens=prompt_tokens, max_tokens=max_tokens,
            output_tokens=output, rng=rng, stream=asyncio.Queue() if stream else None,
            done=loop.create_future(), arrival=self.clock(),
            block_hashes=(block_hashes(prompt, prompt_tokens)
                          if self.prefix_cache is not None else ()),
            priority=priority,
        )
        self._enqueue(request)
        self._publish_queue()
        self._wake.set()
        return request

    def _enqueue(self, request: SimRequest) -> None:
        """Into the waiting queue: at its end, or under the priority policy
        after every waiting request of its priority or a lower one. Running
        requests are not preempted: on vLLM's engine we saw priority reorder
        the waiting queue only (docs/overload.md)."""
        if not self.by_priority:
            self.waiting.append(request)
            return
        position = len(self.waiting)
        while position > 0 and self.waiting[position - 1].priority > request.priority:
            position -= 1
        self.waiting.insert(position, request)

    def abort(self, request: SimRequest) -> None:
        """The client went away: free its slot, count it as aborted."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        else:
            return
        self.metrics.finished["abort"].inc()
        self._finish(request, None)

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def pause(self, paused: bool) -> None:
        self.paused = paused
        if paused:
            self._resume.clear()
        else:
            self._resume.set()

    async def resumed(self) -> None:
        """Return once the engine is not paused."""
        await self._resume.wait()

    def kill(self) -> None:
        """Engine death: every request in flight fails, new ones are refused."""
        self.dead = True
        for request in [*self.running, *self.waiting]:
            self.metrics.finished["error"].inc()
            self._finish(request, EngineDead("EngineCore encountered an issue."))
        self.running.clear()
        self.waiting.clear()
        self._publish_queue()

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)

    # --- the step loop ---------------------------------------------------
    async def _run(self) -> None:
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
            await self._resume.wait()
            await self.step()

    def _admit(self) -> list[SimRequest]:
        admitted = []
        kv_used = sum(r.kv_tokens for r in self.running)
        now = self.clock()
        while self.waiting and len(self.running) < self.max_num_seqs:
            head = self.waiting[0]
            if self.running and kv_used + head.prompt_tokens > self.kv_capacity_tokens:
                break  # FIFO: nothing jumps the queue
            self.waiting.popleft()
            head.admitted = now
            self.running.append(head)
            admitted.append(head)
            kv_used += head.prompt_tokens
            self._use_prefix_cache(head)
        return admitted

    def _use_prefix_cache(self, request: SimRequest) -> None:
        if self.prefix_cache is None:
            return
        hits = self.prefix_cache.hit_blocks(request.block_hashes)
        # vLLM always computes at least the prompt's last token.
        request.cached_tokens = min(hits * BLOCK_TOKENS, request.prompt_tokens - 1)
        self.prefix_cache.store(request.block_hashes)
        self.metrics.prefix_queries.inc(request.prompt_tokens)
        self.metrics.prefix_hits.inc(request.cached_tokens)

    async def step(self) -> None:
        """One engine iteration: admit, spend the step's time, emit a token each."""
        admitted = self._admit()
        self._publish_queue()
        if not self.running:
            return
        prompt_tokens = sum(r.prompt_tokens for r in admitted)
        prefill_tokens = prompt_tokens - sum(r.cached_tokens for r in admitted)
        batch = len(self.running)
        duration = self.model.step_time(batch, prefill_tokens, self.speed)
        await self.sleep(duration)
        if self.dead:
            return
        now = self.clock()
        metrics = self.metrics
        metrics.iteration_tokens.observe(prefill_tokens + batch)
        metrics.prompt_tokens.inc(prompt_tokens)
        metrics.generation_tokens.inc(batch)
        decoding = 0
        finished = []
        for request in self.running:
            token = (" " if request.tokens else "") + request.rng.choice(WORDS)
            request.tokens.append(token)
            if request.first_token is None:
                request.first_token = now
                metrics.ttft.observe(now - request.arrival)
            else:
                decoding += 1
            request.last_token = now
            if request.stream is not None:
                request.stream.put_nowait(token)
            if len(request.tokens) >= request.output_tokens:
                finished.append(request)
        observe_many(metrics.itl, duration, decoding)
        for request in finished:
            self.running.remove(request)
            self._record_finished(request, now)
            self._finish(request, None)
        self._publish_queue()

    def _record_finished(self, request: SimRequest, now: float) -> None:
        m = self.metrics
        assert request.admitted is not None and request.first_token is not None
        generated = len(request.tokens)
        m.finished[request.finish_reason].inc()
        m.request_prompt_tokens.observe(request.prompt_tokens)
        m.request_generation_tokens.observe(generated)
        m.max_generation_tokens.observe(request.max_tokens)
        m.params_max_tokens.observe(request.max_tokens)
        m.e2e.observe(now - request.arrival)
        m.queue_time.observe(request.admitted - request.arrival)
        m.inference_time.observe(now - request.admitted)
        m.prefill_time.observe(request.first_token - request.admitted)
        m.decode_time.observe(now - request.first_token)
        if generated > 1:
            m.tpot.observe((now - request.first_token) / (generated - 1))

    def _finish(self, request: SimRequest, error: BaseException | None) -> None:
        request.error = error
        if request.stream is not None:
            request.stream.put_nowait(None)
        if not request.done.done():
            request.done.set_result(None)

    def _publish_queue(self) -> None:
        m = self.metrics
        m.running.set(len(self.running))
        m.waiting.set(len(self.waiting))
        m.waiting_capacity.set(len(self.waiting))
        used = sum(r.kv_tokens for r in self.running)
        m.kv_usage.set(min(1.0, used / self.kv_capacity_tokens))
