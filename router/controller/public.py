"""The read-only fleet summary the gateway serves at /fleet/status.

It is built from the admin API's /status but leaves out what a browser has
no business seeing: replica addresses, probe error texts (which name
internal ports) and override expiry details. No token is needed, because it
holds nothing that changes the fleet; the gateway puts the API key check in
front of it when keys are enabled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from router.fleet_status import (
    DashboardLink,
    FleetStatus,
    PublicDecision,
    PublicFleetStatus,
    PublicReplica,
    PublicRollout,
)
from router.render.dashboards import DASHBOARDS


@dataclass(frozen=True)
class ClusterRecords:
    """What the runtime directory says beside the controller: the spec
    generation each replica runs, and a `fleet apply` under way."""

    generations: Mapping[str, str | None] = field(default_factory=dict)
    rollout: PublicRollout | None = None


def public_status(status: FleetStatus, grafana_url: str | None,
                  records: ClusterRecords | None = None) -> PublicFleetStatus:
    records = records or ClusterRecords()
    last = status.last_decision
    return PublicFleetStatus(
        replicas=[PublicReplica(
            name=r.name, device=r.device, healthy=r.health.healthy, in_rotation=r.in_rotation,
            weight=r.weight, desired_weight=r.desired_weight, reason=r.reason,
            drained=r.override.drained, pinned_weight=r.override.pinned_weight,
            waiting=r.signal("waiting"), running=r.signal("running"),
            ttft_p99_s=r.signal("ttft_p99"), e2e_p99_s=r.signal("e2e_p99"),
            kv_usage=r.signal("kv_usage"), gpu_util=r.signal("gpu_util"),
            prefix_hit_rate=r.signal("prefix_hit_rate"), shedding=r.shedding is not None,
            generation=records.generations.get(r.name))
            for r in status.replicas],
        rollout=records.rollout,
        admission=status.admission,
        keys_over_budget=None if status.budgets is None
        else sum(k.over for k in status.budgets.keys),
        prometheus_ok=status.prometheus.ok,
        last_decision=None if last is None else PublicDecision(
            at=last.at, trigger=last.trigger, applied=last.applied, why=last.why),
        dashboards=[] if grafana_url is None else [
            DashboardLink(title=d.title, url=f"{grafana_url}/d/{d.uid}") for d in DASHBOARDS])
