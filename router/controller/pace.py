"""Pace probes: the controller's own, seconds-fresh measure of each replica's speed.

Prometheus' P99 over a one-minute window needs most of a minute to forget a
slowdown, and the gateway's own timings arrive only as requests finish (and
hardly at all for a replica cut to a trickle). So every ``interval_s`` the
controller sends each replica in rotation the same small streamed completion
(``tokens`` tokens, ``ignore_eos``) straight to its port, times the gaps
between tokens (seconds per output token: the replica's decode step) and
reads, while the probe runs, how many sequences the replica is running
(vLLM's ``num_requests_running``, the probe included).

**Compared at equal load.** A decode step grows with the batch, so a replica
that least_conn happens to hand more work reads slower without being slower;
weighting on that reading is a feedback loop (cut, runs fewer, reads faster,
raised). :class:`PaceTracker` takes the batch out first: over the last
``history_rounds`` rounds it fits how log(seconds per token) grows per
sequence *within* each replica (a pooled within-replica slope, which a
replica's own speed factor cannot bias), and compares replicas at the same
batch: ``x_r = log(pace_r) - slope * batch_r`` minus the round's median.

**Moved on evidence.** ``x_r`` minus the level the replica's weight already
reflects feeds a two-sided CUSUM (router.controller.changepoint) whose
threshold is set from ``false_moves_per_hour`` and the noise measured on the
fleet itself. Only an alarm moves the level, to the median of the rounds the
alarm rests on (at least ``min_rounds``); a level within ``deadband`` of even
is even. Between alarms the level, and so the weight, holds still.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from router.config.spec import PaceSpec
from router.controller.capacity import CapacitySignal, CapacityTracker
from router.controller.changepoint import Cusum, detection_rounds, threshold
from router.controller.policy import PaceSignal

SLOW, EVEN, FAST = "slow", "even", "fast"
# vLLM's gauges of the sequences in the running batch and of those waiting.
RUNNING_METRIC = "vllm:num_requests_running"
WAITING_METRIC = "vllm:num_requests_waiting"
KV_USAGE_METRIC = "vllm:kv_cache_usage_perc"
# An info gauge whose labels are vLLM's cache settings, num_gpu_blocks and
# block_size among them.
CACHE_CONFIG_METRIC = "vllm:cache_config_info"
# The noise scale (log seconds per token) is never taken below this: a
# simulator's exact step times would otherwise make any difference "evidence".
NOISE_FLOOR = 0.03
# Until there are NOISE_BLOCKS_MIN blocks, the noise is assumed at least this
# large: the first rounds after a start must not alarm on a thin estimate.
NOISE_PRIOR = 0.15
# The per-sequence slope of log(seconds per token) is kept in [0, this]: a
# decode step does not get faster with more sequences, nor double per one.
SLOPE_MAX = 0.5
# The long-run noise is read from means of blocks of this many rounds, once
# there are enough blocks to read a spread from.
NOISE_BLOCK_ROUNDS = 10
NOISE_BLOCKS_MIN = 8
# A replica's block means count once it has this many to centre on their median.
NOISE_BLOCKS_CENTRED = 3
# Block means read the long-run spread low (blocks hide correlation longer
# than themselves, and a window's estimate wanders), and Siegmund's run
# length assumes independent rounds: the estimate is widened by half again.
# With it, correlated noise (AR(1), rho 0.5 to 0.8, 14 % to 30 % a round)
# made at most 2 moves an hour on an equal fleet (tests/unit/test_pace.py).
NOISE_WIDENING = 1.5
# Median absolute deviation to a normal standard deviation.
_MAD_TO_SIGMA = 1.4826


def _centred(values: Sequence[float]) -> list[float]:
    if not values:
        return []
    center = statistics.median(values)
    return [v - center for v in values]


def _robust_scale(values: Sequence[float]) -> float:
    center = statistics.median(values)
    return _MAD_TO_SIGMA * statistics.median(abs(v - center) for v in values)


@dataclass(frozen=True)
class PaceReading:
    """One probe: seconds per output token, and the batch it was timed in."""

    seconds_per_token: float
    # Sequences the replica ran while the probe ran; None when it exports no
    # vLLM metrics (another engine): it is then compared at the fleet's batch.
    batch: float | None = None
    # Requests waiting for a batch slot at that moment (None: not exported).
    waiting: float | None = None
    # The share of its KV cache in use then, and the cache's size in tokens
    # (vLLM's kv_cache_usage_perc and cache_config_info; None: not exported).
    kv_usage: float | None = None
    kv_tokens: float | None = None


def zone_of(level: float) -> str:
    return SLOW if level > 0 else FAST if level < 0 else EVEN


def within_slope(history: Mapping[str, Sequence[tuple[float, float]]]) -> float:
    """How log(seconds per token) grows per sequence, from each replica's
    (batch, log pace) pairs around its own means, pooled; 0 without spread."""
    sxy = sxx = 0.0
    for points in history.values():
        if len(points) < 3:
            continue
        mean_b = statistics.fmean(b for b, _ in points)
        mean_y = statistics.fmean(y for _, y in points)
        sxy += sum((b - mean_b) * (y - mean_y) for b, y in points)
        sxx += sum((b - mean_b) ** 2 for b, _ in points)
    return min(SLOPE_MAX, max(0.0, sxy / sxx)) if sxx > 0 else 0.0


def equal_load_deviations(readings: Mapping[str, PaceReading], slope: float) -> dict[str, float]:
    """Each replica's log pace at equal batch, against the round's median; {}
    for fewer than two readings (one replica has nothing to be compared with)."""
    if len(readings) < 2:
        return {}
    batches = [r.batch for r in readings.values() if r.batch is not None]
    fleet_batch = statistics.median(batches) if batches else 0.0
    adjusted = {name: math.log(r.seconds_per_token)
                - slope * (r.batch if r.batch is not None else fleet_batch)
                for name, r in readings.items() if r.seconds_per_token > 0}
    if len(adjusted) < 2:
        return {}
    median = statistics.median(adjusted.values())
    return {name: value - median for name, value in adjusted.items()}


@dataclass(frozen=True)
class CusumPlan:
    """The CUSUM's parameters for one round, in log seconds per token."""

    k: float
    h: float
    cap: float
    noise: float

    def delay_rounds(self, ratio: float, min_rounds: int) -> float:
        """Mean rounds to detect a replica ``ratio`` times slower than the rest."""
        return detection_rounds(math.log(ratio) / self.noise, self.k / self.noise,
                                self.h / self.noise, min_rounds)


def plan_test(settings: PaceSpec, noise: float, replicas: int) -> CusumPlan:
    """k from the smallest difference worth a move, h from the false-move budget."""
    k = math.log(settings.deadband) / 2
    rounds_per_hour = 3600.0 / settings.interval_s
    # Any replica's false alarm is a false move: they share the budget.
    between_false_alarms = rounds_per_hour * max(1, replicas) / settings.false_moves_per_hour
    h = threshold(k / noise, between_false_alarms) * noise
    return CusumPlan(k=k, h=h, cap=h / settings.min_rounds, noise=noise)


class PaceTracker:
    """Folds rounds of pace readings into a :class:`PaceSignal` per replica. Pure."""

    def __init__(self, settings: PaceSpec, slots: Mapping[str, int] | None = None) -> None:
        self.settings = settings
        self.signals: dict[str, PaceSignal] = {}
        self.plan: CusumPlan | None = None
        self.slope = 0.0
        self._maxlen = settings.history_rounds
        self._points: dict[str, deque[tuple[float, float]]] = {}
        self._deviations: dict[str, deque[float]] = {}
        self._recent: dict[str, deque[float]] = {}
        self._levels: dict[str, float] = {}
        self._cusums: dict[str, Cusum] = {}
        self._moved: dict[str, tuple[float, int]] = {}
        # The same rounds' batch readings say how much room each replica has.
        self.capacity = CapacityTracker(settings.deadband, settings.min_rounds,
                                        settings.history_rounds, slots)

    def _deque(self, store: dict[str, deque[float]], name: str) -> deque[float]:
        return store.setdefault(name, deque(maxlen=self._maxlen))

    def noise(self) -> float:
        """The scale of one round's deviation from a replica's level, for sums
        of rounds: the larger of the rounds' robust spread and the spread of
        block means scaled to one round (the batch-means estimate of the
        long-run variance). A replica's readings come in runs (a long prompt
        in its batch for seconds), and a CUSUM that took them for independent
        rounds would alarm on every run."""
        # Each replica's rounds around its own median: a level that is off
        # (a move on a passing stall) shows as every round of that replica
        # deviating alike, which is a bias for the CUSUM to find, not noise;
        # pooled uncentred, it would widen the noise, raise h past any
        # evidence, and strand the wrong level for good.
        pooled = [d for values in self._deviations.values() for d in _centred(list(values))]
        blocks = []
        for values in self._deviations.values():
            means = [statistics.fmean(list(values)[start:start + NOISE_BLOCK_ROUNDS])
                     for start in range(len(values) % NOISE_BLOCK_ROUNDS, len(values),
                                        NOISE_BLOCK_ROUNDS)]
            if len(means) >= NOISE_BLOCKS_CENTRED:
                blocks += _centred(means)
        if len(blocks) < NOISE_BLOCKS_MIN:
            # Too few rounds to read a long-run spread: assume a wide one.
            return max(NOISE_PRIOR, _robust_scale(pooled) if pooled else 0.0) * NOISE_WIDENING
        scale = max(_robust_scale(pooled), _robust_scale(blocks) * math.sqrt(NOISE_BLOCK_ROUNDS))
        return max(NOISE_FLOOR, scale * NOISE_WIDENING)

    def fold(self, readings: Mapping[str, PaceReading], now: float) -> dict[str, PaceSignal]:
        """Take one round (replica -> reading); return the new signals."""
        self.capacity.fold(readings)
        for name, reading in readings.items():
            if reading.batch is not None and reading.seconds_per_token > 0:
                self._points.setdefault(name, deque(maxlen=self._maxlen)).append(
                    (reading.batch, math.log(reading.seconds_per_token)))
        self.slope = within_slope(self._points)
        deviations = equal_load_deviations(readings, self.slope)
        if not deviations:
            return dict(self.signals)
        for name, x in deviations.items():
            self._deque(self._deviations, name).append(x - self._levels.get(name, 0.0))
            self._deque(self._recent, name).append(x)
        plan = self.plan = plan_test(self.settings, self.noise(), len(readings))
        deadband = math.log(self.settings.deadband)
        for name, x in deviations.items():
            level = self._levels.get(name, 0.0)
            cusum = self._cusums.setdefault(name, Cusum())
            cusum.add(x - level, plan.k, plan.cap)
            if cusum.statistic >= plan.h:
                # The alarm is spent whether or not it moves the level: an
                # estimate inside the deadband of the current level is no news.
                behind = max(self.settings.min_rounds, cusum.rounds)
                estimate = statistics.median(list(self._recent[name])[-behind:])
                new_level = 0.0 if abs(estimate) < deadband else estimate
                cusum.reset()
                if new_level != level:
                    self._levels[name] = level = new_level
                    self._moved[name] = (now, behind)
                    # Its rounds before the change ran at another speed, and
                    # mostly at another batch (its weight followed): left in,
                    # they bend the within-replica slope, and the replica drifts
                    # back towards even while still slow, then reads fast once
                    # it recovers. The rounds the alarm rests on are the new speed's.
                    self._points[name] = deque(list(self._points.get(name, ()))[-behind:],
                                               maxlen=self._maxlen)
            moved_at, moved_on = self._moved.get(name, (None, 0))
            reading = readings[name]
            self.signals[name] = PaceSignal(
                ratio=math.exp(level), zone=zone_of(level), deviation=math.exp(x),
                statistic=cusum.statistic, threshold=plan.h, rounds=cusum.rounds,
                moved_at=moved_at, moved_on_rounds=moved_on,
                seconds_per_token=reading.seconds_per_token, batch=reading.batch, at=now)
        return dict(self.signals)

    def forget(self, name: str) -> None:
        """A replica that left rotation starts afresh when it returns."""
        for store in (self.signals, self._points, self._deviations, self._recent,
                      self._levels, self._cusums, self._moved):
            store.pop(name, None)
        self.capacity.forget(name)


def probe_body(model: str, tokens: int) -> dict[str, object]:
    return {"model": model, "prompt": "Count slowly from one to one hundred:",
            "max_tokens": tokens, "ignore_eos": True, "stream": True, "temperature": 0.0}


@dataclass(frozen=True)
class BatchState:
    """A replica's batch, queue and KV cache, from its /metrics (summed over engines)."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    kv_tokens: float | None = None


def batch_state(metrics_text: str) -> BatchState:
    """vLLM's gauges; None for each it does not export."""
    try:
        families = list(text_string_to_metric_families(metrics_text))
    except ValueError:
        return BatchState()
    samples = [sample for family in families for sample in family.samples]

    def values(name: str) -> list[float]:
        return [sample.value for sample in samples if sample.name == name]

    def total(name: str) -> float | None:
        found = values(name)
        return sum(found) if found else None

    # Engines of one server each hold a cache: its usage is the fullest one's.
    usage = values(KV_USAGE_METRIC)
    cache_tokens = 0.0
    for sample in samples:
        if sample.name == CACHE_CONFIG_METRIC:
            try:
                cache_tokens += (float(sample.labels["num_gpu_blocks"])
                                 * float(sample.labels["block_size"]))
            except (KeyError, ValueError):
                continue  # not yet profiled ("None"), or an older vLLM
    return BatchState(total(RUNNING_METRIC), total(WAITING_METRIC),
                      max(usage) if usage else None, cache_tokens or None)


async def _batch(client: httpx.AsyncClient, replica_url: str) -> BatchState:
    try:
        response = await client.get(replica_url + "/metrics")
    except httpx.HTTPError:
        return BatchState()
    return batch_state(response.text) if response.status_code == 200 else BatchState()


async def measure(client: httpx.AsyncClient, replica_url: str, model: str, tokens: int,
                  clock: Callable[[], float] = time.monotonic) -> PaceReading | None:
    """One streamed probe: seconds per output token (the median gap between
    chunks with text) and the batch read once its first token is out, so the
    probe itself is in it. None when it failed or streamed fewer than two."""
    stamps: list[float] = []
    batch: asyncio.Task[BatchState] | None = None
    ok = False
    try:
        async with client.stream("POST", replica_url + "/v1/completions",
                                 json=probe_body(model, tokens)) as response:
            ok = response.status_code == 200
            lines = response.aiter_lines()
            while ok and (line := await anext(lines, None)) is not None:
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    ok = False
                    continue
                if any(choice.get("text") for choice in chunk.get("choices", [])):
                    stamps.append(clock())
                    if batch is None:
                        batch = asyncio.create_task(_batch(client, replica_url))
    except httpx.HTTPError:
        ok = False
    except BaseException:
        if batch is not None:
            batch.cancel()
        raise
    state = await batch if batch is not None else BatchState()
    if not ok or len(stamps) < 2:
        return None
    # The median gap: one chunk held up (a scheduler hiccup on a busy host,
    # a prefill joining the batch) moves the mean, not the median.
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    return PaceReading(statistics.median(gaps), state.running, state.waiting, state.kv_usage,
                       state.kv_tokens)


@dataclass(frozen=True)
class PaceRound:
    signals: dict[str, PaceSignal]
    capacity: dict[str, CapacitySignal]
    # Replicas whose probe failed or streamed too little to time.
    failed: tuple[str, ...]


class PaceProber:
    """Sends the probe round and keeps the tracker; I/O at the edge of the policy."""

    def __init__(self, urls: Mapping[str, str], model: str, settings: PaceSpec,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time,
                 slots: Mapping[str, int] | None = None) -> None:
        self.urls = dict(urls)
        self.model = model
        self.settings = settings
        self.tracker = PaceTracker(settings, slots)
        self.clock = clock
        self._client = httpx.AsyncClient(timeout=settings.timeout_s, transport=transport)

    async def close(self) -> None:
        await self._client.aclose()

    async def probe(self, names: Sequence[str]) -> PaceRound:
        """One round over ``names``; replicas not in it are forgotten."""
        for name in set(self.tracker.signals) - set(names):
            self.tracker.forget(name)
        results = await asyncio.gather(*(
            measure(self._client, self.urls[name], self.model, self.settings.tokens)
            for name in names))
        readings = {name: reading for name, reading in zip(names, results, strict=True)
                    if reading is not None}
        return PaceRound(signals=self.tracker.fold(readings, self.clock()),
                         capacity=dict(self.tracker.capacity.signals),
                         failed=tuple(name for name in names if name not in readings))
