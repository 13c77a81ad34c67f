"""Capacity: how many sequences a replica admits at once, measured when it is full. Pure.

Speed is one way replicas differ; room is the other. A replica started with
half the ``max_num_seqs``, or half the KV cache, is as fast per token as its
neighbours but runs half the batch: under equal weights ``least_conn``
hands it as many requests in flight as the others, and the excess waits in
its queue while the others have free slots. Its weight should follow its
room.

Room is only visible when it runs out. While requests wait for a slot
(vLLM's ``num_requests_waiting`` above 0), the batch a replica runs is its
admission limit: ``max_num_seqs``, or fewer when the KV cache fills first.
The pace probes read both gauges every round (router.controller.pace);
:class:`CapacityTracker` keeps, per replica, the batch of its last rounds
with a queue, and takes its median as the replica's limit once
``min_rounds`` such rounds exist. A replica that never queued has a lower
bound only: the largest batch it ran.

A replica's capacity ratio is its measured limit over the median of the
others' (their limits, or their lower bounds), capped at 1: the rule only
ever lowers the weight of a replica that ran out of room below what its
neighbours showed they hold, and never raises one on a guess. A ratio
within the deadband of 1 is 1, so equal replicas whose limits wander with
the prompt mix keep equal weights. The limit outlives the queue (once
weighted down, the replica may never queue again) until the replica leaves
rotation: a restart may bring other settings.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

# Rounds with a queue whose batch is kept per replica.
LIMIT_ROUNDS = 30


class BatchReading(Protocol):
    """What a pace round read of one replica's batch (router.controller.pace.PaceReading)."""

    @property
    def batch(self) -> float | None: ...

    @property
    def waiting(self) -> float | None: ...


@dataclass(frozen=True)
class CapacitySignal:
    """A replica's room against the fleet's."""

    # Its admission limit (median batch while requests waited), or None.
    limit: float | None
    # The largest batch it ran in the remembered rounds: a lower bound.
    peak: float
    # The others' median limit or lower bound it was compared with, or None.
    fleet: float | None
    # The share of a full weight its room earns: in (0, 1], 1 when even.
    ratio: float

    def evidence(self) -> str:
        if self.limit is None or self.fleet is None:
            return ""
        return (f"capacity {self.limit:g} sequences at saturation vs {self.fleet:g} for the "
                f"others ({self.ratio:.2f}x)")


class CapacityTracker:
    """Folds each round's batch readings into a :class:`CapacitySignal` per replica."""

    def __init__(self, deadband: float, min_rounds: int, memory_rounds: int) -> None:
        self.deadband = deadband
        self.min_rounds = min_rounds
        self._memory = memory_rounds
        self._limits: dict[str, deque[float]] = {}
        self._batches: dict[str, deque[float]] = {}
        self.signals: dict[str, CapacitySignal] = {}

    def fold(self, readings: Mapping[str, BatchReading]) -> dict[str, CapacitySignal]:
        for name, reading in readings.items():
            if reading.batch is None:
                continue
            self._batches.setdefault(name, deque(maxlen=self._memory)).append(reading.batch)
            if reading.waiting is not None and reading.waiting >= 1:
                self._limits.setdefault(name, deque(maxlen=LIMIT_ROUNDS)).append(reading.batch)
        known = {name: self._room(name) for name in self._batches}
        for name in self._batches:
            limit = self._limit(name)
            others = [room for other, room in known.items() if other != name]
            fleet = statistics.median(others) if others else None
            ratio = 1.0
            if limit is not None and fleet is not None and fleet > 0:
                share = min(1.0, limit / fleet)
                ratio = 1.0 if share > 1 / self.deadband else share
            self.signals[name] = CapacitySignal(limit=limit, peak=max(self._batches[name]),
                                                fleet=fleet, ratio=ratio)
        return dict(self.signals)

    def _limit(self, name: str) -> float | None:
        limits = self._limits.get(name)
        if limits is None or len(limits) < self.min_rounds:
            return None
        return statistics.median(limits)

    def _room(self, name: str) -> float:
        limit = self._limit(name)
        return limit if limit is not None else max(self._batches[name], default=-math.inf)

    def forget(self, name: str) -> None:
        for store in (self._limits, self._batches, self.signals):
            store.pop(name, None)
