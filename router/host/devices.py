"""What the box has to run replicas on: NVIDIA GPUs by UUID, or CPU cores.

NVML sees every GPU and ignores CUDA_VISIBLE_DEVICES, and its index order is
not CUDA's, so GPUs are always identified by UUID. A missing driver or
library is not an error here: it means "no GPUs", and ``engine: auto`` then
falls back to the CPU engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as NVML reports it."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int


@dataclass(frozen=True)
class Inventory:
    """The devices found: GPUs (possibly none) and the CPU cores we may use."""

    gpus: tuple[Gpu, ...]
    cpu_cores: tuple[int, ...]
    nvml_error: str | None = None


def _import_pynvml() -> ModuleType:
    import pynvml  # type: ignore[import-untyped]

    module: ModuleType = pynvml
    return module


def discover_gpus(
    load_nvml: Callable[[], ModuleType] = _import_pynvml,
) -> tuple[tuple[Gpu, ...], str | None]:
    """List GPUs through NVML; return (gpus, why-none) and never raise."""
    try:
        nvml: Any = load_nvml()
    except ImportError as exc:
        return (), f"pynvml is not installed ({exc})"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return (), f"NVML unavailable: {exc}"
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_bytes=int(memory.total),
                )
            )
        return tuple(gpus), None
    except Exception as exc:
        return (), f"NVML failed while listing GPUs: {exc}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", exc)


def usable_cpu_cores() -> tuple[int, ...]:
    """The cores this process may run on (honours taskset/cgroup cpusets)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return tuple(range(os.cpu_count() or 1))


def discover(load_nvml: Callable[[], ModuleType] = _import_pynvml) -> Inventory:
    """Look at the machine once: GPUs by NVML, cores by affinity."""
    gpus, why = discover_gpus(load_nvml)
    if why:
        log.info("no GPUs: %s", why)
    return Inventory(gpus=gpus, cpu_cores=usable_cpu_cores(), nvml_error=why)
