"""`fleet render compose`: the docker-compose deployment, from the cluster spec.

Two files come out of one spec: ``docker-compose.yml`` (one vLLM container
per GPU, the gateway, Grafana) and the gateway's own spec
(``deploy/compose/gateway.yaml``), with which the gateway container runs
``fleet up --foreground`` exactly as bare metal does, its replicas being the
vLLM containers (``engine: external``). The vLLM command line comes from the
same :func:`router.config.plan.vllm_argv` that bare-metal GPU replicas use.

Pure: the spec in, text out; the CLI writes the files.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from router import REPO_ROOT
from router.config.plan import vllm_argv
from router.config.spec import ClusterSpec, parse_spec, resolve_engine_settings
from router.errors import SpecError
from router.render.templates import template

COMPOSE_FILE = "docker-compose.yml"
GATEWAY_SPEC = Path("deploy") / "compose" / "gateway.yaml"
# Every replica container listens here on its own address.
REPLICA_PORT = 8000
CONTAINER_RUNTIME_DIR = "/var/lib/llm-fleet"
# Spec sections that mean nothing to a gateway whose replicas are containers.
_REPLICA_ONLY = ("engine", "replicas", "vllm", "gpu", "ports", "sim", "compose", "runtime_dir",
                 "external_replicas", "startup_timeout_s")


@dataclass(frozen=True)
class ComposeReplica:
    name: str
    ip: str
    gpu_index: int


@dataclass(frozen=True)
class RenderedCompose:
    compose: str
    gateway_spec: str


def addresses(spec: ClusterSpec, gpus: int) -> tuple[str, list[ComposeReplica]]:
    network = ipaddress.IPv4Network(spec.compose.subnet)
    # Replica i takes .(10 + i); the broadcast address is not a host.
    if 10 + gpus > network.num_addresses - 1:
        raise SpecError(f"compose.subnet {network} has no room for {gpus} replicas",
                        hint="use a larger subnet, e.g. 172.28.0.0/24")
    gateway_ip = str(network.network_address + 2)
    replicas = [ComposeReplica(f"replica-{i}", str(network.network_address + 10 + i), i)
                for i in range(gpus)]
    return gateway_ip, replicas


def gateway_spec(spec: ClusterSpec, replicas: list[ComposeReplica]) -> dict[str, Any]:
    """The user's spec as the gateway container reads it.

    Only what differs from the defaults is kept, so the file stays short and
    a default changed in a later llm-fleet reaches it.
    """
    own = spec.model_dump(mode="json", exclude_defaults=True)
    data: dict[str, Any] = {k: v for k, v in own.items() if k not in _REPLICA_ONLY}
    settings = resolve_engine_settings(spec, "gpu")
    data["engine"] = "external"
    data["runtime_dir"] = CONTAINER_RUNTIME_DIR
    data["gateway"] = {**data.get("gateway", {}), "host": "0.0.0.0"}
    # The host's model cache means nothing in the container: name the model only.
    data["model"] = {"name": settings.model, "served_name": settings.served_model_name}
    # The console links to the Grafana this deployment publishes, unless the
    # spec names another one.
    if spec.console.grafana_url is None:
        data["console"] = {**data.get("console", {}), "grafana_url":
                           f"http://{spec.compose.grafana_bind}:{spec.compose.grafana_port}"}
    data["external_replicas"] = [{"address": f"{r.ip}:{REPLICA_PORT}", "gpu_index": r.gpu_index}
                                 for r in replicas]
    # The file must be a spec llm-fleet accepts.
    parse_spec(data, source=str(GATEWAY_SPEC))
    return data


def render_compose(spec: ClusterSpec, gpus: int, out_dir: Path) -> RenderedCompose:
    if gpus < 1:
        raise SpecError(f"--gpus {gpus}: need at least one GPU", hint="e.g. --gpus 4")
    if spec.gpu.replicas_per_gpu != 1:
        # Each replica service reserves its GPU by device id.
        raise SpecError(f"gpu.replicas_per_gpu: {spec.gpu.replicas_per_gpu}, but the compose "
                        "deployment runs one replica container per GPU",
                        hint="set gpu.replicas_per_gpu: 1 for compose, or run the box with "
                             "`fleet up`")
    if spec.vllm.replicas:
        raise SpecError("vllm.replicas: the compose deployment gives every replica container "
                        "the same vLLM arguments",
                        hint="remove vllm.replicas for compose, or run the box with `fleet up`")
    gateway_ip, replicas = addresses(spec, gpus)
    settings = resolve_engine_settings(spec, "gpu")
    # The model id, not a local path: vLLM finds it in the mounted HF cache.
    argv = vllm_argv("python3", settings, settings.model, REPLICA_PORT, spec.vllm.extra_args,
                     host="0.0.0.0", by_priority=spec.priority.enabled)[3:]
    repo = os.path.relpath(REPO_ROOT, out_dir.resolve())
    compose = template("deploy/compose/docker-compose.yml.j2").render(
        gpus=gpus,
        vllm_image=spec.compose.vllm_image,
        grafana_image=spec.compose.grafana_image,
        vllm_args=argv,
        replica_memory=spec.compose.replica_memory,
        replica_cpus=f"{spec.compose.replica_cpus:g}",
        model_cache=spec.compose.model_cache,
        replica_port=REPLICA_PORT,
        replicas=replicas,
        repo=repo,
        gateway_spec=f"./{GATEWAY_SPEC.as_posix()}",
        gateway_port=spec.gateway.port,
        gateway_ip=gateway_ip,
        prometheus_port=spec.prometheus.port,
        grafana_bind=spec.compose.grafana_bind,
        grafana_port=spec.compose.grafana_port,
        subnet=spec.compose.subnet,
    )
    header = (f"# The gateway container's spec, rendered by `fleet render compose --gpus {gpus}`\n"
              "# from the cluster spec: edit that one, not this file.\n")
    text = header + yaml.safe_dump(gateway_spec(spec, replicas), sort_keys=False)
    return RenderedCompose(compose=compose, gateway_spec=text)
