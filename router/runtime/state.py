"""``state.json``: what `fleet up` started, for every process that needs to know.

The CLI, the controller, the GPU exporter and the drills read the running
cluster from this file rather than re-planning from the spec (devices or the
model cache may have changed since). :class:`ClusterState` is its one schema:
written from the plan, read back typed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router.config.plan import ClusterPlan, WarmupPlan
from router.disk.paths import RuntimePaths, write_atomic
from router.errors import ClusterError


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as it was started."""

    name: str
    url: str
    device: str
    gpu_uuid: str | None = None
    gpu_index: int | None = None
    cpu_core: int | None = None
    # Batch slots it was started with; None for a replica run by something else.
    max_num_seqs: int | None = None
    # The generation of the spec it runs (ClusterSpec.generation); `fleet
    # apply` moves it replica by replica.
    generation: str | None = None

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")


@dataclass(frozen=True)
class ClusterState:
    """The running cluster, as `fleet up` recorded it."""

    engine: str
    model: str
    served_model_name: str
    gateway_url: str
    gateway_status_url: str
    replicas: tuple[ReplicaRecord, ...]
    spec_path: str | None = None
    model_path: str | None = None
    prometheus_url: str | None = None
    controller_url: str | None = None
    warmup: WarmupPlan | None = None
    # Keys a newer or older llm-fleet wrote that this one does not know;
    # kept so a save does not drop them.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_plan(cls, plan: ClusterPlan, spec_path: Path | None) -> ClusterState:
        spec = plan.spec
        return cls(
            spec_path=str(spec_path) if spec_path else None,
            engine=plan.engine.engine,
            model=plan.engine.model,
            model_path=plan.model_path,
            served_model_name=plan.engine.served_model_name,
            gateway_url=plan.gateway_url,
            gateway_status_url=f"http://127.0.0.1:{spec.gateway.status_port}/stub_status",
            prometheus_url=(f"http://127.0.0.1:{spec.prometheus.port}"
                            if spec.prometheus.enabled else None),
            controller_url=(f"http://127.0.0.1:{spec.controller.port}"
                            if spec.controller.enabled else None),
            warmup=plan.warmup,
            replicas=tuple(ReplicaRecord(name=r.name, url=r.url, device=r.device,
                                         gpu_uuid=r.gpu_uuid, gpu_index=r.gpu_index,
                                         cpu_core=r.cpu_core, max_num_seqs=r.max_num_seqs,
                                         generation=spec.generation())
                           for r in plan.replicas),
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__
                if name != "extra"}
        data["warmup"] = asdict(self.warmup) if self.warmup else None
        data["replicas"] = [asdict(r) for r in self.replicas]
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterState:
        known = set(cls.__dataclass_fields__) - {"extra"}
        try:
            fields = {k: v for k, v in data.items() if k in known}
            fields["replicas"] = tuple(ReplicaRecord(**r) for r in data["replicas"])
            fields["warmup"] = WarmupPlan(**data["warmup"]) if data.get("warmup") else None
            return cls(**fields, extra={k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError) as exc:
            raise ClusterError(f"state.json does not describe a cluster: {exc}",
                               hint="it is written by `fleet up`; run `fleet down` and "
                                    "`fleet up` again to rewrite it") from exc

    @classmethod
    def read(cls, path: Path) -> ClusterState | None:
        """The state in ``path``; None when there is none."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ClusterError(f"{path} is not JSON: {exc}",
                               hint="it is written by `fleet up`; run `fleet down` and "
                                    "`fleet up` again to rewrite it") from exc
        return cls.from_json(data)

    @classmethod
    def load(cls, paths: RuntimePaths) -> ClusterState | None:
        return cls.read(paths.state_json)

    def save(self, paths: RuntimePaths) -> None:
        write_atomic(paths.state_json, json.dumps(self.to_json(), indent=2) + "\n")

    def replica(self, name: str) -> ReplicaRecord | None:
        return next((r for r in self.replicas if r.name == name), None)
