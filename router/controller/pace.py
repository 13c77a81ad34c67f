"""Pace probes: the controller's own, seconds-fresh measure of each replica's speed.

Prometheus' P99 over a one-minute window needs most of a minute to forget a
slowdown, and the gateway's own timings arrive only as requests finish (and
hardly at all for a replica cut to a trickle). So every ``interval_s`` the
controller sends each replica in rotation the same small streamed completion
(``tokens`` tokens, ``ignore_eos``) straight to its port, and times the gaps
between tokens: seconds per output token, the replica's decode step for the
batch it is running. The same request everywhere makes the reading robust to
the clients' prompt and output mix, and a replica at weight 1 is measured as
often as a busy one, so its recovery is seen at once.

Each round is turned into ratios against the round's median (a load change
that slows every replica alike moves no ratio). :class:`PaceTracker` keeps
each replica's median over the last ``window_rounds`` rounds, which one odd
round cannot move, and counts how many rounds in a row that median stayed in
the same zone (slow, even, fast; the zones split at ``deadband``). The
policy reads both: ``strong_rounds`` in a row is strong evidence and moves
the weight in one step; fewer moves it only through the smoothing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from router.config.spec import PaceSpec
from router.controller.policy import PaceSignal

SLOW, EVEN, FAST = "slow", "even", "fast"


def zone_of(ratio: float, deadband: float) -> str:
    if ratio > deadband:
        return SLOW
    if ratio < 1 / deadband:
        return FAST
    return EVEN


def round_ratios(paces: Mapping[str, float]) -> dict[str, float]:
    """Each replica's seconds per token over the round's median; {} for fewer
    than two readings (one replica has nothing to be compared with)."""
    if len(paces) < 2:
        return {}
    median = statistics.median(paces.values())
    if median <= 0:
        return {}
    return {name: pace / median for name, pace in paces.items()}


class PaceTracker:
    """Folds rounds of pace readings into a :class:`PaceSignal` per replica. Pure."""

    def __init__(self, settings: PaceSpec) -> None:
        self.settings = settings
        self.signals: dict[str, PaceSignal] = {}
        self._recent: dict[str, deque[float]] = {}

    def fold(self, paces: Mapping[str, float], now: float) -> dict[str, PaceSignal]:
        """Take one round (replica -> seconds per token); return the new signals."""
        for name, ratio in round_ratios(paces).items():
            recent = self._recent.setdefault(name, deque(maxlen=self.settings.window_rounds))
            recent.append(ratio)
            median = statistics.median(recent)
            zone = zone_of(median, self.settings.deadband)
            before = self.signals.get(name)
            streak = before.streak + 1 if before is not None and before.zone == zone else 1
            self.signals[name] = PaceSignal(ratio=median, streak=streak, zone=zone,
                                            seconds_per_token=paces[name], at=now)
        return dict(self.signals)

    def forget(self, name: str) -> None:
        """A replica that left rotation starts afresh when it returns."""
        self.signals.pop(name, None)
        self._recent.pop(name, None)


def probe_body(model: str, tokens: int) -> dict[str, object]:
    return {"model": model, "prompt": "Count slowly from one to one hundred:",
            "max_tokens": tokens, "ignore_eos": True, "stream": True, "temperature": 0.0}


async def measure(client: httpx.AsyncClient, replica_url: str, model: str, tokens: int,
                  clock: Callable[[], float] = time.monotonic) -> float | None:
    """Seconds per output token of one streamed probe (the median gap between
    chunks with text), or None when it failed or streamed fewer than two."""
    stamps: list[float] = []
    try:
        async with client.stream("POST", replica_url + "/v1/completions",
                                 json=probe_body(model, tokens)) as response:
            if response.status_code != 200:
                return None
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    return None
                if any(choice.get("text") for choice in chunk.get("choices", [])):
                    stamps.append(clock())
    except httpx.HTTPError:
        return None
    if len(stamps) < 2:
        return None
    # The median gap: one chunk held up (a scheduler hiccup on a busy host,
    # a prefill joining the batch) moves the mean, not the median.
    return statistics.median([later - earlier
                              for earlier, later in zip(stamps, stamps[1:], strict=False)])


@dataclass(frozen=True)
class PaceRound:
    signals: dict[str, PaceSignal]
    # Replicas whose probe failed or streamed too little to time.
    failed: tuple[str, ...]


class PaceProber:
    """Sends the probe round and keeps the tracker; I/O at the edge of the policy."""

    def __init__(self, urls: Mapping[str, str], model: str, settings: PaceSpec,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.urls = dict(urls)
        self.model = model
        self.settings = settings
        self.tracker = PaceTracker(settings)
        self.clock = clock
        self._client = httpx.AsyncClient(timeout=settings.timeout_s, transport=transport)

    async def close(self) -> None:
        await self._client.aclose()

    async def probe(self, names: Sequence[str]) -> PaceRound:
        """One round over ``names``; replicas not in it are forgotten."""
        for name in set(self.tracker.signals) - set(names):
            self.tracker.forget(name)
        readings = await asyncio.gather(*(
            measure(self._client, self.urls[name], self.model, self.settings.tokens)
            for name in names))
        paces = {name: pace for name, pace in zip(names, readings, strict=True)
                 if pace is not None}
        return PaceRound(signals=self.tracker.fold(paces, self.clock()),
                         failed=tuple(name for name in names if name not in paces))
