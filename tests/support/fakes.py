"""Test doubles for things a CI machine does not have (GPUs, NVML)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from router.host.devices import Gpu, Inventory
from router.runtime.state import ClusterState, ReplicaRecord


def gpu_inventory(count: int, cores: int = 16) -> Inventory:
    gpus = tuple(
        Gpu(index=i, uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            name="NVIDIA GeForce RTX 4090 D", memory_total_bytes=24 * 2**30)
        for i in range(count)
    )
    return Inventory(gpus=gpus, cpu_cores=tuple(range(cores)))


def cpu_inventory(cores: int = 2) -> Inventory:
    return Inventory(gpus=(), cpu_cores=tuple(range(cores)),
                     nvml_error="NVML Shared Library Not Found")


class NVMLError(Exception):
    pass


@dataclass
class FakeNvml:
    """Just enough of pynvml for discovery: a list of (uuid, name, total bytes)."""

    devices: list[tuple[str, str, int]]
    fail_init: bool = False
    fail_on_index: int | None = None
    shutdowns: int = 0
    driver: str = "580.159.04"
    cuda: int = 13000  # what nvmlSystemGetCudaDriverVersion answers: 1000 * major + 10 * minor

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        if index == self.fail_on_index:
            raise NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> Any:  # noqa: N802
        return self.devices[handle][0]

    def nvmlDeviceGetName(self, handle: int) -> Any:  # noqa: N802
        return self.devices[handle][1].encode()  # older pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:  # noqa: N802
        return SimpleNamespace(total=self.devices[handle][2], used=0, free=self.devices[handle][2])

    def nvmlSystemGetDriverVersion(self) -> Any:  # noqa: N802
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return self.cuda


def write_state(path: Path, pinned: list[tuple[str, str | None]]) -> Path:
    """A state.json for replicas ``(name, gpu_uuid)``, as `fleet up` writes it."""
    replicas = tuple(ReplicaRecord(name=name, url=f"http://127.0.0.1:{8100 + i}",
                                   device=uuid or f"cpu:{i}", gpu_uuid=uuid)
                     for i, (name, uuid) in enumerate(pinned))
    state = ClusterState(engine="gpu", model="m", served_model_name="m",
                         gateway_url="http://127.0.0.1:8080",
                         gateway_status_url="http://127.0.0.1:8081/stub_status",
                         replicas=replicas)
    path.write_text(json.dumps(state.to_json()))
    return path
