"""Capacity: how much work a replica holds at once, against its neighbours. Pure.

Speed is one way replicas differ; room is the other. A replica started with
half the ``max_num_seqs``, or half the KV cache, is as fast per token as its
neighbours but runs half the batch: under equal weights ``least_conn``
hands it as many requests in flight as the others, and the excess waits in
its queue while the others have free slots. Its weight should follow its
room, and only its room: how full a replica is *now* is load, which
least_conn balances, and a weight that followed it would chase the load.

Room has two measures, each a fact about the replica rather than its load:

- **Batch slots** (``max_num_seqs``). For a replica llm-fleet starts, the
  plan knows them (``slots``). For one it does not (engine ``external``)
  they are measured: while requests wait (vLLM's ``num_requests_waiting``
  above 0) with at least half the KV cache free and the batch as large as
  any it ran, the batch is the slot limit, and its median over the last
  rounds with a queue is the replica's limit once ``min_rounds`` exist. A
  queue with the cache fuller than that says the cache ran out first: those
  rounds measure the prompts in it, not the slots, and are left out (on an
  equal fleet with long prompts they were the whole of the difference); so
  is a queue at a smaller batch than the replica has run, which is arrivals
  the scheduler has not yet taken (an equal GPU pair showed 9 waiting at a
  batch of 40 for one round). A replica never seen full has a lower bound
  only: the largest batch it ran.
- **KV cache tokens**: what vLLM allotted at start, ``num_gpu_blocks`` x
  ``block_size`` from its ``vllm:cache_config_info``, read every round.

A replica's capacity ratio is, on each measure, its room over the median of
the others', capped at 1, and the smaller of the two: the rule only ever
lowers the weight of a replica with less room than its neighbours, never
raises one on a guess. A ratio within the deadband of 1 is 1. A measured
limit outlives the queue (once weighted down, the replica may never queue
again) until the replica leaves rotation: a restart may bring other settings.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

# Rounds with a queue whose batch is kept per replica.
LIMIT_ROUNDS = 30
# A queue counts as the slot limit only while at least half the KV cache is
# free; fuller, the next prompt may simply not fit.
SLOT_BOUND_KV_USAGE = 0.5


class BatchReading(Protocol):
    """What a pace round read of one replica (router.controller.pace.PaceReading)."""

    @property
    def batch(self) -> float | None: ...

    @property
    def waiting(self) -> float | None: ...

    @property
    def kv_usage(self) -> float | None: ...

    @property
    def kv_tokens(self) -> float | None: ...


@dataclass(frozen=True)
class Room:
    """One measure of a replica's room against the others' median."""

    what: str  # "batch slots" or "KV cache tokens"
    own: float
    fleet: float
    # Where ``own`` comes from: "started with", "measured at saturation", "vLLM's cache".
    source: str

    @property
    def share(self) -> float:
        return min(1.0, self.own / self.fleet) if self.fleet > 0 else 1.0


@dataclass(frozen=True)
class CapacitySignal:
    """A replica's room against the fleet's."""

    # The measure that limits it most, or None when no measure says less than even.
    room: Room | None
    # The share of a full weight its room earns: in (0, 1], 1 when even.
    ratio: float

    def evidence(self) -> str:
        if self.room is None:
            return ""
        room = self.room
        return (f"capacity {room.own:,.0f} {room.what} ({room.source}) vs {room.fleet:,.0f} for "
                f"the others ({self.ratio:.2f}x)")


class CapacityTracker:
    """Folds each round's readings into a :class:`CapacitySignal` per replica."""

    def __init__(self, deadband: float, min_rounds: int, memory_rounds: int,
                 slots: Mapping[str, int] | None = None) -> None:
        self.deadband = deadband
        self.min_rounds = min_rounds
        self._memory = memory_rounds
        # Batch slots each replica was started with, where the plan knows them.
        self._declared = dict(slots or {})
        self._limits: dict[str, deque[float]] = {}
        self._batches: dict[str, deque[float]] = {}
        self._kv_tokens: dict[str, float] = {}
        self.signals: dict[str, CapacitySignal] = {}

    def fold(self, readings: Mapping[str, BatchReading]) -> dict[str, CapacitySignal]:
        for name, reading in readings.items():
            if reading.kv_tokens:
                self._kv_tokens[name] = reading.kv_tokens
            if reading.batch is None:
                continue
            batches = self._batches.setdefault(name, deque(maxlen=self._memory))
            batches.append(reading.batch)
            if (reading.waiting is not None and reading.waiting >= 1
                    and reading.batch >= max(batches)
                    and reading.kv_usage is not None
                    and reading.kv_usage < SLOT_BOUND_KV_USAGE):
                self._limits.setdefault(name, deque(maxlen=LIMIT_ROUNDS)).append(reading.batch)
        known = set(self._batches) | set(self._kv_tokens)
        for name in known:
            rooms = [room for room in (self._slot_room(name, known), self._kv_room(name, known))
                     if room is not None]
            tightest = min(rooms, key=lambda room: room.share, default=None)
            share = tightest.share if tightest is not None else 1.0
            even = share > 1 / self.deadband
            self.signals[name] = CapacitySignal(room=None if even else tightest,
                                                ratio=1.0 if even else share)
        return dict(self.signals)

    def _slots(self, name: str) -> tuple[float, str] | None:
        """A replica's slot limit and where it comes from, or None while unknown."""
        if name in self._declared:
            return float(self._declared[name]), "started with"
        limits = self._limits.get(name)
        if limits is None or len(limits) < self.min_rounds:
            return None
        return statistics.median(limits), "measured at saturation"

    def _slot_room(self, name: str, known: set[str]) -> Room | None:
        own = self._slots(name)
        if own is None:
            return None
        others = []
        for other in known - {name}:
            limit = self._slots(other)
            if limit is not None:
                others.append(limit[0])
            elif self._batches.get(other):
                others.append(max(self._batches[other]))
        if not others:
            return None
        return Room("batch slots", own[0], statistics.median(others), own[1])

    def _kv_room(self, name: str, known: set[str]) -> Room | None:
        own = self._kv_tokens.get(name)
        others = [self._kv_tokens[o] for o in known - {name} if o in self._kv_tokens]
        if own is None or not others:
            return None
        return Room("KV cache tokens", own, statistics.median(others), "vLLM's cache")

    def forget(self, name: str) -> None:
        for store in (self._limits, self._batches, self._kv_tokens, self.signals):
            store.pop(name, None)
