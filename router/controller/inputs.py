"""The controller's inputs: one protocol for everything it learns.

An input refreshes what it knows on its own schedule (``poll``, every
``interval_s``), says whether that calls for a decision now (a health flip,
a pace verdict, fresh signals), and writes its part into the policy's
``Snapshot`` (``observe``). The controller runs one loop per input and
knows none of them by name: the health probes (router.controller.probes),
the supervisor's process states (router.controller.processes), and the two
below, Prometheus' signals and the pace probes.

Adding an input: its module here (or beside it) with these four members,
its field in ``policy.Snapshot`` and its rule in ``policy.decide``, and one
line in ``router.controller.main`` that hands it to the controller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from router.config.spec import ControllerSpec
from router.controller.capacity import CapacitySignal
from router.controller.metrics import ControllerMetrics
from router.controller.pace import PaceProber
from router.controller.policy import PaceSignal, ReplicaSignals, Sample, Snapshot
from router.errors import MetricsUnavailable

log = logging.getLogger(__name__)


class Input(Protocol):
    # The trigger a decision it asks for is logged with.
    name: str

    @property
    def interval_s(self) -> float: ...

    async def poll(self, in_rotation: Sequence[str]) -> bool:
        """Refresh; True when what changed calls for a decision now.
        ``in_rotation``: the replicas the gateway sends requests to."""
        ...

    def observe(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` with this input's part filled in, as of ``snapshot.now``."""
        ...

    async def close(self) -> None: ...


class SignalSource(Protocol):
    """Per-replica signals over a window (router.controller.signals.PrometheusClient)."""

    async def signals(self, window: str) -> dict[str, ReplicaSignals]: ...

    async def close(self) -> None: ...


def _aged(signals: ReplicaSignals, extra_s: float) -> ReplicaSignals:
    def older(sample: Sample | None) -> Sample | None:
        return None if sample is None else Sample(sample.value, sample.age_s + extra_s)

    return ReplicaSignals(**{name: older(getattr(signals, name))
                             for name in ReplicaSignals.__dataclass_fields__})


class PrometheusInput:
    """Latency, queues and GPU readings from Prometheus, every ``evaluate_interval_s``.

    If Prometheus is down the last signals are kept as they age: once stale
    they count as no data, so weights hold while the probes still act on health.
    """

    name = "signals"

    def __init__(self, source: SignalSource, settings: ControllerSpec,
                 clock: Callable[[], float], metrics: ControllerMetrics | None = None) -> None:
        self.source = source
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.signals: dict[str, ReplicaSignals] = {}
        self.signals_at: float | None = None
        self.error: str | None = None

    @property
    def interval_s(self) -> float:
        return self.settings.evaluate_interval_s

    @property
    def ok(self) -> bool:
        return self.error is None and self.signals_at is not None

    async def poll(self, in_rotation: Sequence[str]) -> bool:
        try:
            self.signals = await self.source.signals(self.settings.latency_window)
            self.signals_at = self.clock()
            self.error = None
        except MetricsUnavailable as exc:
            if self.error is None:
                log.warning("prometheus unavailable, holding weights: %s", exc.message)
            self.error = exc.message
        if self.metrics is not None:
            self.metrics.prometheus_up.set(int(self.error is None))
        return True

    def observe(self, snapshot: Snapshot) -> Snapshot:
        # Signals age while Prometheus cannot be asked again.
        extra = 0.0 if self.signals_at is None else max(0.0, snapshot.now - self.signals_at)
        return replace(snapshot, signals={name: _aged(s, extra)
                                          for name, s in self.signals.items()})

    async def close(self) -> None:
        await self.source.close()


class PaceInput:
    """The pace probes (router.controller.pace): every replica in rotation
    timed once a round, and the verdicts and capacities that come of it."""

    name = "pace"

    def __init__(self, prober: PaceProber, metrics: ControllerMetrics | None = None) -> None:
        self.prober = prober
        self.metrics = metrics
        self.signals: dict[str, PaceSignal] = {}
        self.capacity: dict[str, CapacitySignal] = {}

    @property
    def interval_s(self) -> float:
        return self.prober.settings.interval_s

    async def poll(self, in_rotation: Sequence[str]) -> bool:
        round_ = await self.prober.probe(in_rotation)
        self.signals, self.capacity = round_.signals, round_.capacity
        for name, signal in round_.signals.items():
            if signal.just_moved:
                log.info("pace move replica=%s decision=ratio %.2f (%s) reason=CUSUM reached "
                         "h %.3f on %d rounds", name, signal.ratio, signal.zone,
                         signal.threshold, signal.moved_on_rounds)
        if self.metrics is not None:
            for name in round_.failed:
                self.metrics.pace_failures.labels(replica=name).inc()
        return True

    def observe(self, snapshot: Snapshot) -> Snapshot:
        return replace(snapshot, pace=dict(self.signals), pacing=True,
                       capacity=dict(self.capacity))

    async def close(self) -> None:
        await self.prober.close()
