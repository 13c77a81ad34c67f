"""The GPU exporter without NVML, with NVML failing, and with a fake NVML."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.gpu_exporter import GpuCollector
from tests.support.fakes import write_state


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
    pass


class FakeNvml:
    """pynvml's surface used by the exporter, for two GPUs."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_AGGREGATE_ECC = 1
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, uuids: list[str], fail: dict[str, Exception] | None = None) -> None:
        self.uuids = uuids
        self.fail = fail or {}

    def _maybe_fail(self, call: str) -> None:
        if call in self.fail:
            raise self.fail[call]

    def nvmlInit(self) -> None:  # noqa: N802
        self._maybe_fail("init")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return self.uuids[h]

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802
        return b"NVIDIA GeForce RTX 4090 D"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:  # noqa: N802
        self._maybe_fail("util")
        return SimpleNamespace(gpu=97 if h == 0 else 3, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:  # noqa: N802
        return SimpleNamespace(used=20 * 2**30, total=24 * 2**30, free=4 * 2**30)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:  # noqa: N802
        return 71

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        return 425_500  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:  # noqa: N802
        return 425_000

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:  # noqa: N802
        return 2520  # MHz

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:  # noqa: N802
        return 123_456_000  # mJ

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:  # noqa: N802
        raise NVMLError_NotSupported("consumer card")


class Scrape:
    """One scrape's exposition, parsed once (each collect() is a new reading)."""

    def __init__(self, collector: GpuCollector) -> None:
        registry = CollectorRegistry()
        registry.register(collector)
        self.text = generate_latest(registry).decode()
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in text_string_to_metric_families(self.text)
                        for s in family.samples}

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.samples.get((name, tuple(sorted((labels or {}).items()))))


def _scrape(collector: GpuCollector) -> Scrape:
    return Scrape(collector)


def _loader(fake: FakeNvml):  # type: ignore[no-untyped-def]
    return lambda: cast(ModuleType, fake)


def test_without_nvml_only_availability_zero() -> None:
    def missing() -> ModuleType:
        raise ImportError("No module named 'pynvml'")

    registry = _scrape(GpuCollector(load_nvml=missing))
    assert registry.get_sample_value("fleet_gpu_exporter_nvml_available") == 0
    assert "fleet_gpu_utilization_percent{" not in registry.text


def test_nvml_init_failure_is_availability_zero() -> None:
    fake = FakeNvml(["GPU-a"], fail={"init": NVMLError("Driver Not Loaded")})
    registry = _scrape(GpuCollector(load_nvml=_loader(fake)))
    assert registry.get_sample_value("fleet_gpu_exporter_nvml_available") == 0


def test_readings_in_base_units_with_replica_labels(tmp_path: Path) -> None:
    state = write_state(tmp_path / "state.json",
                        [("replica-0", "GPU-a"), ("replica-1", "GPU-b")])
    registry = _scrape(GpuCollector(state, load_nvml=_loader(FakeNvml(["GPU-a", "GPU-b"]))))
    labels = {"gpu_uuid": "GPU-a", "gpu_index": "0", "gpu_name": "NVIDIA GeForce RTX 4090 D",
              "replica": "replica-0"}
    assert registry.get_sample_value("fleet_gpu_utilization_percent", labels) == 97
    assert registry.get_sample_value("fleet_gpu_power_watts", labels) == 425.5
    assert registry.get_sample_value("fleet_gpu_sm_clock_hertz", labels) == 2.52e9
    assert registry.get_sample_value("fleet_gpu_memory_total_bytes", labels) == 24 * 2**30
    assert registry.get_sample_value("fleet_gpu_energy_joules_total", labels) == 123_456
    assert registry.get_sample_value("fleet_gpu_utilization_percent",
                                     {**labels, "gpu_uuid": "GPU-b", "gpu_index": "1",
                                      "replica": "replica-1"}) == 3
    # ECC is not supported on this card: left out, and not an error.
    assert "fleet_gpu_ecc_corrected_errors_total{" not in registry.text


def test_one_failing_field_drops_only_that_field() -> None:
    fake = FakeNvml(["GPU-a"], fail={"util": NVMLError("GPU is lost")})
    collector = GpuCollector(load_nvml=_loader(fake))
    registry = _scrape(collector)
    assert registry.get_sample_value("fleet_gpu_exporter_read_errors_total",
                                     {"field": "fleet_gpu_utilization_percent"}) == 1
    assert registry.get_sample_value(
        "fleet_gpu_temperature_celsius",
        {"gpu_uuid": "GPU-a", "gpu_index": "0", "gpu_name": "NVIDIA GeForce RTX 4090 D",
         "replica": ""}) == 71


def test_a_gpu_that_vanished_is_reported(tmp_path: Path) -> None:
    state = write_state(tmp_path / "state.json",
                        [("replica-0", "GPU-a"), ("replica-1", "GPU-gone")])
    registry = _scrape(GpuCollector(state, load_nvml=_loader(FakeNvml(["GPU-a"]))))
    assert registry.get_sample_value("fleet_gpu_present",
                                     {"gpu_uuid": "GPU-gone", "replica": "replica-1"}) == 0
    assert registry.get_sample_value("fleet_gpu_present",
                                     {"gpu_uuid": "GPU-a", "replica": "replica-0"}) == 1


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"


def _utilisation(path: Path) -> dict[str, float]:
    return {s.labels["replica"]: s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples if s.name == "fleet_gpu_utilization_percent"}


def test_real_gpu_capture_shows_each_replicas_load_on_its_own_gpu() -> None:
    """Captured on 2 x H200 by tests/fixtures/gpu/capture.sh (see that script)."""
    assert _utilisation(FIXTURES / "idle.metrics") == {"replica-0": 0, "replica-1": 0}
    busy0 = _utilisation(FIXTURES / "load-replica-0.metrics")
    busy1 = _utilisation(FIXTURES / "load-replica-1.metrics")
    assert busy0["replica-0"] >= 90 and busy0["replica-1"] <= 10
    assert busy1["replica-1"] >= 90 and busy1["replica-0"] <= 10


def test_real_capture_of_two_loads_at_once_and_a_vanished_gpu() -> None:
    """Both GPUs busy at once (GPU 0 all the time, GPU 1 about 30 % of it), with a
    state file naming a third GPU that NVML does not list."""
    capture = FIXTURES / "both-loaded.metrics"
    busy = _utilisation(capture)
    assert busy["replica-0"] >= 90 and 10 <= busy["replica-1"] <= 60
    assert "replica-2" not in busy
    present = {s.labels["replica"]: s.value
               for family in text_string_to_metric_families(capture.read_text())
               for s in family.samples if s.name == "fleet_gpu_present"}
    assert present == {"replica-0": 1, "replica-1": 1, "replica-2": 0}


def test_real_capture_has_the_families_the_exporter_writes_today() -> None:
    def families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
        return {f.name: (f.type, frozenset(k for s in f.samples for k in s.labels))
                for f in text_string_to_metric_families(text) if f.samples}

    fake = Scrape(GpuCollector(load_nvml=_loader(FakeNvml(["GPU-a"]))))
    real = families((FIXTURES / "load-replica-0.metrics").read_text())
    # ECC is not supported by the fake consumer card; the H200 reports it.
    assert set(families(fake.text)) <= set(real)
    assert {k: v for k, v in real.items() if k in families(fake.text)} == families(fake.text)


def test_real_capture_of_two_replicas_sharing_one_busy_gpu() -> None:
    """Captured on one H200 by docs/benchmarks/gpu-h200/qualify.sh while two vLLM
    replicas pinned to it (gpu.replicas_per_gpu: 2) served 256 streams."""
    capture = FIXTURES / "two-replicas-one-gpu-loaded.metrics"
    assert _utilisation(capture) == {"replica-0,replica-1": 100.0}
    memory = [s.value for family in text_string_to_metric_families(capture.read_text())
              for s in family.samples if s.name == "fleet_gpu_memory_used_bytes"]
    assert len(memory) == 1 and memory[0] > 100 * 2**30  # both replicas' memory, one series
