from __future__ import annotations

from types import ModuleType
from typing import cast

from router.host.devices import discover, discover_gpus
from tests.support.fakes import FakeNvml


def _loader(fake: FakeNvml):  # type: ignore[no-untyped-def]
    return lambda: cast(ModuleType, fake)


def test_no_pynvml_means_no_gpus() -> None:
    def missing() -> ModuleType:
        raise ImportError("No module named 'pynvml'")

    gpus, why = discover_gpus(missing)
    assert gpus == ()
    assert why is not None and "not installed" in why


def test_nvml_library_absent_means_no_gpus() -> None:
    inventory = discover(_loader(FakeNvml([], fail_init=True)))
    assert inventory.gpus == ()
    assert inventory.nvml_error is not None and "Driver Not Loaded" in inventory.nvml_error
    assert len(inventory.cpu_cores) >= 1


def test_gpus_are_listed_by_uuid() -> None:
    fake = FakeNvml([("GPU-aaa", "RTX 4090 D", 24 * 2**30), ("GPU-bbb", "RTX 4090 D", 24 * 2**30)])
    gpus, why = discover_gpus(_loader(fake))
    assert why is None
    assert [g.uuid for g in gpus] == ["GPU-aaa", "GPU-bbb"]
    assert gpus[1].name == "RTX 4090 D" and gpus[1].index == 1
    assert fake.shutdowns == 1


def test_nvml_failing_mid_listing_is_reported_not_raised() -> None:
    fake = FakeNvml([("GPU-aaa", "x", 1), ("GPU-bbb", "x", 1)], fail_on_index=1)
    gpus, why = discover_gpus(_loader(fake))
    assert gpus == ()
    assert why is not None and "GPU is lost" in why
    assert fake.shutdowns == 1
