"""gpu.replicas_per_gpu and model.load_format: dummy, planned against a fake NVML."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config.plan import build_plan, choose_engine, memory_share
from router.config.spec import parse_spec, resolve_engine_settings
from router.disk.paths import RuntimePaths
from router.errors import DeviceError, SpecError
from router.gpu_exporter import replica_map
from router.host.machine import detect
from router.render.programs import replica_program
from tests.support.fakes import gpu_inventory, write_state


def _plan(data: dict, gpus: int = 2):  # type: ignore[no-untyped-def]
    spec = parse_spec(data)
    inventory = gpu_inventory(gpus)
    settings = resolve_engine_settings(spec, choose_engine(spec, inventory))
    return build_plan(spec, settings, inventory, "/models/m", "/venv/bin/python")


def _flag(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_two_replicas_per_gpu_share_its_uuid_on_distinct_ports() -> None:
    plan = _plan({"gpu": {"replicas_per_gpu": 2}}, gpus=2)
    assert [r.name for r in plan.replicas] == [f"replica-{i}" for i in range(4)]
    assert len({r.port for r in plan.replicas}) == 4
    uuids = [r.gpu_uuid for r in plan.replicas]
    assert uuids[0] == uuids[1] != uuids[2] == uuids[3]
    for replica in plan.replicas:
        assert replica.env["CUDA_VISIBLE_DEVICES"] == replica.gpu_uuid
        assert replica.shares_gpu
        assert _flag(replica.argv, "--gpu-memory-utilization") == "0.45"


def test_memory_share_splits_the_spec_share_and_never_exceeds_it() -> None:
    settings = resolve_engine_settings(parse_spec({"vllm": {"gpu_memory_utilization": 0.85}}),
                                       "gpu")
    assert memory_share(settings, 1) == 0.85
    assert memory_share(settings, 2) == 0.425
    assert memory_share(settings, 3) == 0.283
    assert 3 * memory_share(settings, 3) <= 0.85  # type: ignore[operator]


def test_one_replica_per_gpu_is_unchanged_and_takes_no_start_lock(tmp_path: Path) -> None:
    plan = _plan({}, gpus=2)
    assert not any(r.shares_gpu for r in plan.replicas)
    program = replica_program(plan.replicas[0], RuntimePaths(tmp_path), detect())
    assert "--start-lock" not in program.argv


def test_replicas_of_a_shared_gpu_start_under_one_lock(tmp_path: Path) -> None:
    plan = _plan({"gpu": {"replicas_per_gpu": 2}}, gpus=2)
    paths = RuntimePaths(tmp_path)
    locks = [_flag(replica_program(r, paths, detect()).argv, "--start-lock") for r in plan.replicas]
    assert locks[0] == locks[1] != locks[2] == locks[3]
    program = replica_program(plan.replicas[1], paths, detect())
    assert _flag(program.argv, "--ready-url") == plan.replicas[1].url + "/health"


def test_an_explicit_count_fills_gpus_in_order_and_is_bounded() -> None:
    plan = _plan({"replicas": 3, "gpu": {"replicas_per_gpu": 2}}, gpus=2)
    assert [r.gpu_index for r in plan.replicas] == [0, 0, 1]
    assert [r.shares_gpu for r in plan.replicas] == [True, True, False]
    with pytest.raises(DeviceError, match="room for 4 at gpu.replicas_per_gpu: 2"):
        _plan({"replicas": 5, "gpu": {"replicas_per_gpu": 2}}, gpus=2)


def test_replicas_per_gpu_out_of_range_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"gpu.replicas_per_gpu"):
        parse_spec({"gpu": {"replicas_per_gpu": 0}})


def test_exporter_names_every_replica_of_a_shared_gpu(tmp_path: Path) -> None:
    plan = _plan({"gpu": {"replicas_per_gpu": 2}}, gpus=2)
    state = write_state(tmp_path / "state.json", [(r.name, r.gpu_uuid) for r in plan.replicas])
    mapping = replica_map(state)
    assert mapping == {plan.replicas[0].gpu_uuid: "replica-0,replica-1",
                       plan.replicas[2].gpu_uuid: "replica-2,replica-3"}


def test_dummy_weights_are_served_under_a_name_that_says_so() -> None:
    plan = _plan({"model": {"load_format": "dummy"}}, gpus=1)
    assert plan.engine.served_model_name == "qwen2.5-7b-instruct-dummy"
    argv = plan.replicas[0].argv
    assert _flag(argv, "--load-format") == "dummy"
    assert "--quantization" not in argv
    assert "--load-format" not in _plan({}, gpus=1).replicas[0].argv


def test_a_dummy_served_name_must_say_dummy() -> None:
    with pytest.raises(SpecError, match="must say 'dummy'"):
        parse_spec({"model": {"load_format": "dummy", "served_name": "qwen"}})
    spec = parse_spec({"model": {"load_format": "dummy", "served_name": "qwen-DUMMY"}})
    assert resolve_engine_settings(spec, "gpu").served_model_name == "qwen-DUMMY"


def test_dummy_weights_need_a_vllm_engine() -> None:
    with pytest.raises(SpecError, match="engine sim has no weights"):
        parse_spec({"engine": "sim", "model": {"load_format": "dummy"}})


def test_load_format_is_the_specs_to_set() -> None:
    with pytest.raises(SpecError, match="--load-format is set by llm-fleet"):
        parse_spec({"vllm": {"extra_args": ["--load-format=dummy"]}})
