"""What the controller says about the fleet: one typed form, one JSON form.

The controller's admin ``GET /status`` answers ``FleetStatus``; the
gateway's ``/fleet/status`` answers ``PublicFleetStatus``, the part a
browser may see. Every reader (the CLI's status table, `fleet up`'s
readiness wait, the bench's weight sampler, the drills, the console) parses
the JSON back into these models, so a renamed or retyped field fails in one
place, in a test, and the admin API's OpenAPI schema says exactly what it
answers. Pure: pydantic models, no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    # Readers ignore fields they do not know: a newer controller may say more.
    model_config = ConfigDict(frozen=True, extra="ignore")


class SignalReading(_Model):
    """One Prometheus signal of a replica: its value and how old it is (None: not finite)."""

    value: float | None
    age_s: float | None


class Health(_Model):
    """The controller's own /health probes of a replica."""

    healthy: bool
    consecutive_failures: int
    last_success: float | None
    last_error: str | None


class PaceView(_Model):
    """The pace test's verdict on a replica (router.controller.pace)."""

    ratio: float
    zone: str
    deviation: float
    statistic: float
    threshold: float
    rounds: int
    moved_at: float | None
    moved_on_rounds: int
    seconds_per_token: float
    batch: float | None
    age_s: float


class RoomView(_Model):
    """What limits a replica's room, against the others' (router.controller.capacity)."""

    what: str
    own: float
    fleet: float
    source: str


class CapacityView(_Model):
    ratio: float
    evidence: str | None
    room: RoomView | None


class OverrideView(_Model):
    """An admin's drain or pin on a replica."""

    drained: bool
    pinned_weight: int | None
    pin_expires_at: float | None


class ReplicaStatus(_Model):
    name: str
    url: str
    device: str
    # What nginx runs (None before the first reload) and what the policy wants.
    weight: int | None
    in_rotation: bool | None
    desired_weight: int | None
    # supervisord's state of its process, when the cluster runs under it.
    process: str | None
    reason: str | None
    # Why its keyed requests spill to the balanced upstream, or None.
    shedding: str | None
    health: Health
    signals: dict[str, SignalReading | None]
    pace: PaceView | None
    capacity: CapacityView | None
    override: OverrideView

    def signal(self, name: str) -> float | None:
        reading = self.signals.get(name)
        return None if reading is None else reading.value


class PrometheusView(_Model):
    ok: bool
    error: str | None
    last_success: float | None


class DecisionRecord(_Model):
    """One evaluation of the policy (GET /decisions, and the last in /status)."""

    at: float
    trigger: str
    applied: bool
    why: str
    weights: dict[str, int]
    down: list[str]
    reasons: dict[str, str]
    error: str | None = None


class PaceTestView(_Model):
    """The pace test's parameters as of its latest round: what a move needs."""

    noise: float
    k: float
    threshold: float
    cap: float
    slope_per_sequence: float
    false_moves_per_hour: float
    deadband: float
    # Rounds to detect a replica this many times slower, e.g. "2x".
    detection_rounds: dict[str, float]


class ClassAdmission(_Model):
    """One priority class the gateway may shed for the fleet's queue wait."""

    name: str
    limit_s: float
    shed: bool
    retry_after_s: int
    reason: str


class FairShareView(_Model):
    """Fair shares between API keys (spec priority.fair_share)."""

    # Requests each key may hold in flight now; None: no cap.
    per_key: int | None
    keys_in_use: int | None
    slots: int
    reason: str


class AdmissionView(_Model):
    """Shedding from saturation (spec priority.shed_queue_wait_s): the fleet's
    queue as last read, and each class's verdict."""

    queue_wait_s: float | None
    waiting: float | None
    finished_per_s: float | None
    error: str | None
    classes: list[ClassAdmission]
    fair_share: FairShareView | None = None


class KeyBudgetView(_Model):
    """One API key's tokens against its budget (spec budgets)."""

    key: str
    name: str | None
    used: int
    budget: int
    over: bool
    # Requests it may have in flight while its minute has room for few
    # answers; None: no cap.
    in_flight_cap: int | None
    retry_after_s: int | None


class BudgetsView(_Model):
    """Token budgets: each budgeted key's tokens over the window."""

    window_s: float
    # Why the counters could not be read; None when they were.
    error: str | None
    keys: list[KeyBudgetView]


class FleetStatus(_Model):
    """The controller's GET /status."""

    replicas: list[ReplicaStatus]
    prometheus: PrometheusView
    pace_test: PaceTestView | None
    last_decision: DecisionRecord | None
    # None when no class is shed for saturation.
    admission: AdmissionView | None = None
    # None when budgets are off.
    budgets: BudgetsView | None = None

    def replica(self, name: str) -> ReplicaStatus | None:
        return next((r for r in self.replicas if r.name == name), None)

    @property
    def all_in_rotation(self) -> bool:
        return all(r.in_rotation for r in self.replicas)


class PublicReplica(_Model):
    name: str
    device: str
    healthy: bool
    in_rotation: bool | None
    weight: int | None
    desired_weight: int | None
    reason: str | None
    drained: bool
    pinned_weight: int | None
    waiting: float | None
    running: float | None
    ttft_p99_s: float | None
    e2e_p99_s: float | None
    kv_usage: float | None
    gpu_util: float | None
    prefix_hit_rate: float | None
    shedding: bool
    # The spec generation it runs (`fleet apply` moves it replica by replica).
    generation: str | None = None

    @property
    def routed(self) -> bool:
        """Whether new requests can reach it: in nginx's rotation and not drained."""
        return bool(self.in_rotation) and not self.drained

    @property
    def routed_weight(self) -> int:
        """Its share of new requests as nginx weighs them: 0 when not routed."""
        return (self.weight or 0) if self.routed else 0


class PublicDecision(_Model):
    at: float
    trigger: str
    applied: bool
    why: str


class DashboardLink(_Model):
    title: str
    url: str


class PublicRollout(_Model):
    """A `fleet apply` under way: its step and the replicas it has done."""

    step: str
    generation: str | None
    done: list[str]


class PublicFleetStatus(_Model):
    """The gateway's /fleet/status: no addresses, probe errors or expiry details."""

    replicas: list[PublicReplica]
    prometheus_ok: bool
    last_decision: PublicDecision | None
    dashboards: list[DashboardLink]
    rollout: PublicRollout | None = None
    # Shedding and fair shares (spec priority); None when neither is on.
    admission: AdmissionView | None = None
    # Token budgets: how many keys are over theirs (which ones is for the
    # operator's `fleet status`, not every key holder); None when off.
    keys_over_budget: int | None = None

    def routed_weights(self) -> dict[str, int]:
        return {r.name: r.routed_weight for r in self.replicas}
