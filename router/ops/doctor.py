"""`fleet doctor`: a preflight that says, one line each, what stands between
this box and a serving fleet, and how to fix it.

Facts are gathered once (NVML, installed packages, disk, ports) into a
:class:`Facts`; :func:`diagnose` turns spec + facts into verdicts and is
pure, so every verdict is unit-tested with a fake NVML and no GPU.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from router.config.plan import build_plan, choose_engine, memory_share
from router.config.spec import ClusterSpec, resolve_engine_settings
from router.errors import FleetError
from router.host.devices import Inventory, _import_pynvml, discover
from router.models import store as model_store
from router.runtime.cluster import busy_ports

log = logging.getLogger(__name__)

GiB = 1 << 30
# The oldest driver of each CUDA major release (NVIDIA's CUDA release notes).
MIN_DRIVER_FOR_CUDA = {12: "525.60.13", 13: "580.65.06"}
# What vLLM holds beside weights and KV cache: activations at the profiled
# batch, CUDA graphs, the CUDA context. About 2 GiB was seen on an H200.
RUNTIME_OVERHEAD_BYTES = 2 * GiB
# Logs and Prometheus data of a running cluster, for a few days.
MIN_RUNTIME_FREE_BYTES = 2 * GiB

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Verdict:
    status: Status
    check: str
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{self.status:<4}  {self.check:<8}  {self.detail}"]
        return out + ([f"{'':<4}  {'':<8}  fix: {self.fix}"] if self.fix else [])


@dataclass(frozen=True)
class Facts:
    """What the box is, read once."""

    inventory: Inventory
    driver_version: str | None = None
    driver_cuda: tuple[int, int] | None = None  # highest CUDA the driver runs
    build_cuda: tuple[int, int] | None = None  # CUDA vLLM's torch was built for
    vllm_version: str | None = None
    model_path: str | None = None
    model_error: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    weights_bytes: int | None = None  # files on disk; None for dummy weights
    busy_ports: tuple[str, ...] = ()
    runtime_free_bytes: int | None = None
    model_cache_free_bytes: int | None = None


def cuda_of_torch(torch_version: str) -> tuple[int, int] | None:
    """'2.11.0+cu130' -> (13, 0); a CPU or ROCm build -> None."""
    match = re.search(r"\+cu(\d+)(\d)$", torch_version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def estimate_weights_bytes(config: dict[str, Any]) -> int | None:
    """Weights of a decoder-only transformer from its config: linear layers at
    the quantized width (plus one fp16 scale and a 4-bit zero per group),
    embeddings and head at 16 bits. Within a few percent of vLLM's own load
    figure for the reference model (5.38 GiB)."""
    try:
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
        intermediate, vocab = config["intermediate_size"], config["vocab_size"]
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads", heads)
    except KeyError:
        return None
    head_dim = config.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    linear = layers * (attention + 3 * hidden * intermediate)
    quant = config.get("quantization_config") or {}
    bits = quant.get("bits", 16)
    group = quant.get("group_size", 0)
    per_weight = bits / 8 + ((2 + 0.5) / group if bits < 16 and group > 0 else 0)
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return int(linear * per_weight + embeddings * 2)


def kv_bytes_per_token(config: dict[str, Any]) -> int | None:
    try:
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
        heads = config["num_attention_heads"]
    except KeyError:
        return None
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    return int(2 * layers * kv_heads * head_dim * 2)  # K and V, fp16


def _driver_check(facts: Facts) -> Verdict:
    if facts.driver_version is None or facts.driver_cuda is None:
        return Verdict("FAIL", "driver", "no NVIDIA driver answered through NVML "
                       f"({facts.inventory.nvml_error or 'unknown reason'})",
                       "install the NVIDIA driver (580 or newer for CUDA 13), or set "
                       "engine: cpu")
    have = f"{facts.driver_cuda[0]}.{facts.driver_cuda[1]}"
    if facts.build_cuda is None:
        return Verdict("WARN", "driver", f"driver {facts.driver_version} runs CUDA {have}; "
                       "no CUDA build of torch is installed to compare with",
                       "install vLLM's GPU build (deploy/setup.sh --engine gpu, or an "
                       "offline bundle)")
    need = f"{facts.build_cuda[0]}.{facts.build_cuda[1]}"
    if facts.driver_cuda < facts.build_cuda:
        minimum = MIN_DRIVER_FOR_CUDA.get(facts.build_cuda[0], "a newer one")
        return Verdict("FAIL", "driver", f"driver {facts.driver_version} runs CUDA {have}, "
                       f"but vLLM {facts.vllm_version or ''} is built for CUDA {need}".replace(
                           "  ", " "),
                       f"upgrade the driver to {minimum} or newer; or install a vLLM "
                       f"built for CUDA {facts.driver_cuda[0]} (its wheels for that CUDA, or "
                       "an older release); or use the container path (docker-compose.yml, "
                       "docs/production.md), whose image brings its own CUDA runtime but "
                       "still needs a driver new enough for it")
    return Verdict("OK", "driver", f"driver {facts.driver_version} runs CUDA {have}; vLLM "
                   f"{facts.vllm_version} is built for CUDA {need}")


def _gpu_check(spec: ClusterSpec, facts: Facts) -> Verdict:
    gpus = facts.inventory.gpus
    if not gpus:
        return Verdict("FAIL", "gpus", "NVML lists no GPU",
                       "check `nvidia-smi -L`; in a container, pass the GPUs through")
    listing = "; ".join(f"{g.index}: {g.uuid} {g.name} {g.memory_total_bytes / GiB:.0f} GiB"
                        for g in gpus)
    per_gpu = spec.gpu.replicas_per_gpu
    wanted = spec.replicas
    room = len(gpus) * per_gpu
    if wanted != "auto" and wanted > room:
        return Verdict("FAIL", "gpus", f"{listing}; the spec wants {wanted} replicas, room for "
                       f"{room} at {per_gpu} per GPU",
                       "lower replicas, or raise gpu.replicas_per_gpu")
    count = room if wanted == "auto" else wanted
    return Verdict("OK", "gpus", f"{listing}; {count} replica(s), {per_gpu} per GPU, "
                   "pinned by UUID")


def _memory_check(spec: ClusterSpec, facts: Facts) -> Verdict:
    if facts.model_error:
        return Verdict("FAIL", "model", facts.model_error,
                       "run `fleet model prepare` (or `fleet model prepare --dummy` with "
                       "model.load_format: dummy)")
    settings = resolve_engine_settings(spec, "gpu")
    gpus = facts.inventory.gpus
    if not gpus:
        return Verdict("WARN", "model", "no GPU to size the model against")
    weights = facts.weights_bytes
    source = "on disk"
    if weights is None:
        weights = estimate_weights_bytes(facts.model_config)
        source = "estimated from config.json"
    per_token = kv_bytes_per_token(facts.model_config)
    if weights is None or per_token is None:
        return Verdict("WARN", "model", f"cannot size {facts.model_path}: its config.json lacks "
                       "the layer sizes", "vLLM's own profiling decides at start")
    share = memory_share(settings, spec.gpu.replicas_per_gpu) or 0.0
    smallest = min(g.memory_total_bytes for g in gpus)
    budget = smallest * share
    one_sequence = per_token * settings.max_model_len
    needed = weights + RUNTIME_OVERHEAD_BYTES + one_sequence
    detail = (f"weights {weights / GiB:.2f} GiB ({source}) + one {settings.max_model_len}-token "
              f"sequence's KV {one_sequence / GiB:.2f} GiB + ~{RUNTIME_OVERHEAD_BYTES / GiB:.0f} "
              f"GiB runtime, in a share of {share:g} x {smallest / GiB:.0f} GiB = "
              f"{budget / GiB:.1f} GiB per replica")
    if needed > budget:
        return Verdict("FAIL", "model", detail + ": does not fit",
                       "lower vllm.max_model_len or gpu.replicas_per_gpu, raise "
                       "vllm.gpu_memory_utilization, or pick a smaller model")
    tokens = int((budget - weights - RUNTIME_OVERHEAD_BYTES) / per_token)
    return Verdict("OK", "model", detail + f"; KV room for about {tokens:,} tokens "
                   f"({tokens // settings.max_model_len} full-length sequences)")


def _ports_check(facts: Facts) -> Verdict:
    if facts.busy_ports:
        return Verdict("FAIL", "ports", "in use: " + ", ".join(facts.busy_ports),
                       "stop what holds them, or move the ports in the spec")
    return Verdict("OK", "ports", "every port of the spec is free")


def _disk_check(spec: ClusterSpec, facts: Facts) -> Verdict:
    problems = []
    if facts.runtime_free_bytes is not None and \
            facts.runtime_free_bytes < MIN_RUNTIME_FREE_BYTES:
        problems.append(f"{facts.runtime_free_bytes / GiB:.1f} GiB free for logs and metrics "
                        f"under {spec.runtime_dir}")
    detail = (f"{(facts.runtime_free_bytes or 0) / GiB:.0f} GiB free for logs under "
              f"{spec.runtime_dir}; {(facts.model_cache_free_bytes or 0) / GiB:.0f} GiB for "
              f"models under {spec.model.cache_dir}")
    if problems:
        return Verdict("FAIL", "disk", "; ".join(problems),
                       f"free at least {MIN_RUNTIME_FREE_BYTES / GiB:.0f} GiB, or set "
                       "runtime_dir to a larger disk")
    return Verdict("OK", "disk", detail)


def diagnose(spec: ClusterSpec, facts: Facts) -> list[Verdict]:
    """Every verdict for a GPU fleet; pure."""
    return [_driver_check(facts), _gpu_check(spec, facts), _memory_check(spec, facts),
            _ports_check(facts), _disk_check(spec, facts)]


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def _nvml_driver(load_nvml: Callable[[], ModuleType]) -> tuple[str | None, tuple[int, int] | None]:
    try:
        nvml: Any = load_nvml()
        nvml.nvmlInit()
    except Exception:
        return None, None
    try:
        raw = nvml.nvmlSystemGetDriverVersion()
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        return (raw.decode() if isinstance(raw, bytes) else str(raw),
                (cuda // 1000, (cuda % 1000) // 10))
    except Exception:
        return None, None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            # The readings are taken; a failed shutdown changes none of them.
            log.debug("nvmlShutdown failed: %s", exc)


def _torch_cuda(torch_version: str | None) -> tuple[int, int] | None:
    """From the version's local tag, else from torch itself (some builds carry no tag)."""
    if torch_version is None:
        return None
    tagged = cuda_of_torch(torch_version)
    if tagged is not None or "+" in torch_version:
        return tagged
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.version.cuda or '')"],
                          capture_output=True, text=True, timeout=120, check=False)
    match = re.fullmatch(r"(\d+)\.(\d+)", proc.stdout.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def gather(spec: ClusterSpec, load_nvml: Callable[[], ModuleType] = _import_pynvml,
           inventory: Inventory | None = None) -> Facts:
    """Read the box once: NVML, packages, the model folder, ports and disk."""
    inventory = inventory or discover(load_nvml)
    driver, driver_cuda = _nvml_driver(load_nvml)
    torch_version = _installed("torch")
    settings = resolve_engine_settings(spec, "gpu")
    model_path = model_error = None
    config: dict[str, Any] = {}
    weights = None
    try:
        model_path = model_store.resolve(settings.model, spec.model.cache_dir,
                                         dummy=settings.dummy)
        folder = Path(model_path)
        if folder.is_dir():
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            files = list(folder.glob("*.safetensors"))
            weights = sum(f.stat().st_size for f in files) if files else None
    except FleetError as exc:
        model_error = exc.message
    busy: list[str] = []
    if inventory.gpus:
        try:
            busy = busy_ports(build_plan(spec, settings, inventory,
                                         model_path or settings.model, "python3"))
        except FleetError:
            pass  # the GPU check reports a plan that does not fit
    return Facts(
        inventory=inventory, driver_version=driver, driver_cuda=driver_cuda,
        build_cuda=_torch_cuda(torch_version),
        vllm_version=_installed("vllm"), model_path=model_path, model_error=model_error,
        model_config=config, weights_bytes=weights if not settings.dummy else None,
        busy_ports=tuple(busy), runtime_free_bytes=_free_bytes(spec.runtime_dir),
        model_cache_free_bytes=_free_bytes(spec.model.cache_dir))


def engine_note(spec: ClusterSpec, inventory: Inventory) -> str | None:
    """Doctor checks GPU fleets; say so when the spec would not run one here."""
    try:
        engine = choose_engine(spec, inventory)
    except FleetError as exc:
        return exc.message
    return None if engine == "gpu" else (f"this spec runs the {engine} engine here; the "
                                         "checks below are those of a GPU fleet")
