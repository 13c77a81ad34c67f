"""`fleet doctor` on a fake NVML: every verdict says what is wrong and how to fix it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from router.cli import main
from router.config.spec import parse_spec
from router.ops import doctor
from tests.support.fakes import FakeNvml
from tests.support.fleet import merged, spec_data
from tests.support.harness import free_port, free_port_block

H200 = 143771 * 2**20
RTX_4090D = 24 * 2**30
REFERENCE_CONFIG = json.loads(
    (Path(__file__).parents[2] / "deploy" / "models" / "qwen2.5-7b-instruct-awq"
     / "config.json").read_text())


def _facts(nvml: FakeNvml, spec_data: dict, monkeypatch: pytest.MonkeyPatch,
           torch: str = "2.11.0+cu130") -> tuple[doctor.Facts, list[doctor.Verdict]]:
    spec = parse_spec(spec_data)
    versions = {"torch": torch, "vllm": "0.26.0"}
    monkeypatch.setattr(doctor, "_installed", versions.get)
    facts = doctor.gather(spec, load_nvml=lambda: nvml)  # type: ignore[arg-type, return-value]
    return facts, doctor.diagnose(spec, facts)


def _by_check(verdicts: list[doctor.Verdict]) -> dict[str, doctor.Verdict]:
    return {v.check: v for v in verdicts}


def _dummy_spec(tmp_path: Path, **extra: object) -> dict:
    folder = tmp_path / "models" / "dummy" / "Qwen2.5-7B-Instruct-AWQ"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(REFERENCE_CONFIG))
    (folder / "tokenizer.json").write_text("{}")
    from router.models import store as model_store

    model_store._write_manifest(folder, {"model_id": "test"})
    # Free ports, so a cluster running on this box (the defaults) fails no check here.
    ports = spec_data(tmp_path / "rt", engine="gpu", replicas="auto",
                      gpu_exporter={"port": free_port()},
                      ports={"replica_base": free_port_block(8)})
    return merged(ports, {"model": {"load_format": "dummy",
                                    "cache_dir": str(tmp_path / "models")}, **extra})


def test_an_old_driver_against_a_cuda_13_build_fails_with_the_ways_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([("GPU-a", "NVIDIA GeForce RTX 4090 D", RTX_4090D)],
                    driver="535.183.01", cuda=12020)
    _, verdicts = _facts(nvml, _dummy_spec(tmp_path), monkeypatch)
    driver = _by_check(verdicts)["driver"]
    assert driver.status == "FAIL"
    assert "driver 535.183.01 runs CUDA 12.2, but vLLM 0.26.0 is built for CUDA 13.0" \
        in driver.detail
    assert "580.65.06" in driver.fix and "container path" in driver.fix


def test_a_current_driver_and_a_fitting_model_pass(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([("GPU-a", "NVIDIA H200", H200)])
    _, verdicts = _facts(nvml, _dummy_spec(tmp_path, gpu={"replicas_per_gpu": 2}), monkeypatch)
    checks = _by_check(verdicts)
    assert [v.status for v in verdicts] == ["OK"] * 5, [v.lines() for v in verdicts]
    assert "GPU-a NVIDIA H200 140 GiB" in checks["gpus"].detail
    assert "2 replica(s), 2 per GPU" in checks["gpus"].detail
    # 28 layers x 4 KV heads x 128 x 2 (K, V) x 2 bytes = 56 KiB a token.
    assert "one 8192-token sequence's KV 0.44 GiB" in checks["model"].detail
    assert "estimated from config.json" in checks["model"].detail


def test_the_reference_weights_estimate_is_near_vllms_own_figure() -> None:
    estimate = doctor.estimate_weights_bytes(REFERENCE_CONFIG)
    assert estimate is not None
    # vLLM reported 5.38 GiB of weights for this architecture on an H200.
    assert abs(estimate / 2**30 - 5.38) < 0.3


def test_a_model_too_large_for_its_share_fails(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([("GPU-a", "NVIDIA GeForce RTX 4090 D", RTX_4090D)])
    spec = _dummy_spec(tmp_path, gpu={"replicas_per_gpu": 4},
                       vllm={"max_model_len": 32768})
    model = _by_check(_facts(nvml, spec, monkeypatch)[1])["model"]
    assert model.status == "FAIL" and "does not fit" in model.detail
    assert "max_model_len" in model.fix


def test_a_missing_model_and_a_busy_port_are_named(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([("GPU-a", "NVIDIA H200", H200)])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = {"engine": "gpu", "runtime_dir": str(tmp_path / "rt"),
                "model": {"cache_dir": str(tmp_path / "empty")}, "gateway": {"port": port}}
        checks = _by_check(_facts(nvml, spec, monkeypatch)[1])
    assert checks["model"].status == "FAIL" and "fleet model prepare" in checks["model"].fix
    assert checks["ports"].status == "FAIL" and f"{port} (gateway.port)" in checks["ports"].detail


def test_no_driver_and_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml([], fail_init=True)
    checks = _by_check(_facts(nvml, _dummy_spec(tmp_path), monkeypatch, torch="2.13.0+cpu")[1])
    assert checks["driver"].status == "FAIL" and "580" in checks["driver"].fix
    assert checks["gpus"].status == "FAIL"


def test_cuda_of_torch() -> None:
    assert doctor.cuda_of_torch("2.11.0+cu130") == (13, 0)
    assert doctor.cuda_of_torch("2.5.1+cu124") == (12, 4)
    assert doctor.cuda_of_torch("2.13.0+cpu") is None
    assert doctor.cuda_of_torch("2.13.0") is None


def test_the_command_exits_1_with_one_line_per_check(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"engine: cpu\nruntime_dir: {tmp_path / 'rt'}\n")
    assert main(["doctor", "--spec", str(spec)]) == 1
    out = capsys.readouterr().out
    assert "runs the cpu engine here" in out
    assert [line.split()[1] for line in out.splitlines()
            if line.startswith(("OK", "WARN", "FAIL"))] == ["driver", "gpus", "model", "ports",
                                                             "disk"]
