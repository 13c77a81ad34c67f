"""GPU exporter: NVML readings per GPU, labelled with the replica pinned to it.

    python -m router.gpu_exporter --port 9400 [--state <runtime_dir>/state.json]

Dependencies are kept to the standard library, prometheus-client and
nvidia-ml-py (pynvml), so it also runs on a GPU box that has nothing else.

Each scrape builds fresh metric families (a custom Collector: no state
carries over between scrapes). GPUs are joined to replicas by UUID from the
cluster's state.json, re-read on every scrape; NVML index order is not CUDA's,
so indices are labels, never keys. Failures are contained: NVML missing means
``fleet_gpu_exporter_nvml_available 0`` and nothing else; a field a GPU does
not support (ECC on consumer cards) is left out for that GPU; a read that
fails is counted in ``fleet_gpu_exporter_read_errors_total`` and drops only
that field; a GPU the state file names but NVML no longer finds is reported
with ``fleet_gpu_present 0``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.errors import ClusterError
from router.runtime.state import ClusterState

log = logging.getLogger(__name__)

LABELS = ["gpu_uuid", "gpu_index", "gpu_name", "replica"]


@dataclass(frozen=True)
class Field:
    """One NVML reading exported as one metric (DCGM's default-counters style)."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    read: Callable[[Any, Any], float]  # (pynvml module, handle) -> value in the metric's unit


def _temperature(nvml: Any, handle: Any) -> float:
    return float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))


def _ecc(kind: str) -> Callable[[Any, Any], float]:
    def read(nvml: Any, handle: Any) -> float:
        error_type = (nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED if kind == "corrected"
                      else nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        return float(nvml.nvmlDeviceGetTotalEccErrors(handle, error_type,
                                                      nvml.NVML_AGGREGATE_ECC))
    return read


FIELDS: tuple[Field, ...] = (
    Field("fleet_gpu_utilization_percent", "gauge",
          "Share of the last sample period in which a kernel ran on the GPU (percent).",
          lambda nvml, h: float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)),
    Field("fleet_gpu_memory_utilization_percent", "gauge",
          "Share of the last sample period in which GPU memory was read or written (percent).",
          lambda nvml, h: float(nvml.nvmlDeviceGetUtilizationRates(h).memory)),
    Field("fleet_gpu_memory_used_bytes", "gauge", "GPU memory in use (bytes).",
          lambda nvml, h: float(nvml.nvmlDeviceGetMemoryInfo(h).used)),
    Field("fleet_gpu_memory_total_bytes", "gauge", "GPU memory in total (bytes).",
          lambda nvml, h: float(nvml.nvmlDeviceGetMemoryInfo(h).total)),
    Field("fleet_gpu_temperature_celsius", "gauge", "GPU core temperature (degrees Celsius).",
          _temperature),
    Field("fleet_gpu_power_watts", "gauge", "GPU power draw (watts).",
          lambda nvml, h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
    Field("fleet_gpu_power_limit_watts", "gauge", "Enforced GPU power limit (watts).",
          lambda nvml, h: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
    Field("fleet_gpu_sm_clock_hertz", "gauge", "Current SM clock (hertz).",
          lambda nvml, h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM) * 1e6),
    Field("fleet_gpu_energy_joules", "counter",
          "Energy used since the driver was loaded (joules).",
          lambda nvml, h: nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0),
    Field("fleet_gpu_ecc_corrected_errors", "counter",
          "Corrected ECC memory errors over the GPU's lifetime (count).", _ecc("corrected")),
    Field("fleet_gpu_ecc_uncorrected_errors", "counter",
          "Uncorrected ECC memory errors over the GPU's lifetime (count).", _ecc("uncorrected")),
)


def _import_pynvml() -> ModuleType:
    import pynvml  # type: ignore[import-untyped]

    module: ModuleType = pynvml
    return module


def replica_map(state_file: Path | None) -> dict[str, str]:
    """GPU UUID -> the replicas pinned to it, from state.json; empty when there is none.

    Replicas that share a GPU (gpu.replicas_per_gpu) are named together,
    comma-separated in index order, so each reading stays one series: summing
    a GPU's power or memory over replicas must not count it twice.
    """
    if state_file is None:
        return {}
    try:
        state = ClusterState.read(state_file)
    except ClusterError as exc:
        log.debug("no replica map from %s: %s", state_file, exc.message)
        return {}
    names: dict[str, list[str]] = {}
    for replica in state.replicas if state else ():
        if replica.gpu_uuid:
            names.setdefault(replica.gpu_uuid, []).append(replica.name)
    return {uuid: ",".join(pinned) for uuid, pinned in names.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector(Collector):
    """Reads every GPU on every scrape; never raises out of collect()."""

    def __init__(self, state_file: Path | None = None,
                 load_nvml: Callable[[], ModuleType] = _import_pynvml) -> None:
        self.state_file = state_file
        self._load_nvml = load_nvml
        self._nvml: Any = None
        self._lock = threading.Lock()
        self.read_errors: dict[str, int] = {}

    def _ensure_nvml(self) -> Any:
        if self._nvml is None:
            try:
                nvml = self._load_nvml()
                nvml.nvmlInit()
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, ...
                log.debug("NVML unavailable: %s", exc)
                return None
            self._nvml = nvml
        return self._nvml

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        available = GaugeMetricFamily("fleet_gpu_exporter_nvml_available",
                                      "1 when NVML could be loaded and initialised, else 0.")
        nvml = self._ensure_nvml()
        available.add_metric([], 1.0 if nvml is not None else 0.0)
        yield available
        if nvml is None:
            return
        replicas = replica_map(self.state_file)
        families = {f.name: (GaugeMetricFamily(f.name, f.help, labels=LABELS)
                             if f.kind == "gauge"
                             else CounterMetricFamily(f.name, f.help, labels=LABELS))
                    for f in FIELDS}
        present = GaugeMetricFamily("fleet_gpu_present",
                                    "1 for each GPU NVML lists; 0 for a GPU the cluster's "
                                    "state names but NVML no longer finds.",
                                    labels=["gpu_uuid", "replica"])
        seen: set[str] = set()
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            self._count_error("device_count", exc)
            count = 0
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
            except Exception as exc:
                self._count_error("identity", exc)
                continue
            seen.add(uuid)
            replica = replicas.get(uuid, "")
            present.add_metric([uuid, replica], 1.0)
            labels = [uuid, str(index), name, replica]
            for field in FIELDS:
                try:
                    value = field.read(nvml, handle)
                except Exception as exc:
                    if not _not_supported(nvml, exc):
                        self._count_error(field.name, exc)
                    continue
                families[field.name].add_metric(labels, value)
        for uuid, replica in replicas.items():
            if uuid not in seen:
                present.add_metric([uuid, replica], 0.0)
        yield from families.values()
        yield present
        errors = CounterMetricFamily("fleet_gpu_exporter_read_errors",
                                     "NVML reads that failed, by field.", labels=["field"])
        for field_name, n in sorted(self.read_errors.items()):
            errors.add_metric([field_name], float(n))
        yield errors

    def _count_error(self, field: str, exc: Exception) -> None:
        self.read_errors[field] = self.read_errors.get(field, 0) + 1
        log.warning("NVML read failed field=%s error=%s", field, exc)


def _not_supported(nvml: Any, exc: Exception) -> bool:
    not_supported = getattr(nvml, "NVMLError_NotSupported", None)
    return isinstance(not_supported, type) and isinstance(exc, not_supported)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.gpu_exporter",
                                     description="Export NVML GPU readings for Prometheus.")
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state", type=Path, default=None,
                        help="the cluster's state.json, for the replica label")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    registry = CollectorRegistry()
    registry.register(GpuCollector(args.state))
    try:
        start_http_server(args.port, addr=args.host, registry=registry)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        print("hint: pick a free port with --port", file=sys.stderr)
        return 2
    log.info("GPU exporter on %s:%d state=%s", args.host, args.port, args.state)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
