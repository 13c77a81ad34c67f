from __future__ import annotations

import pytest

from router.config.plan import build_plan, choose_engine
from router.config.spec import parse_spec, resolve_engine_settings
from router.errors import DeviceError, SpecError
from router.runtime.state import ClusterState
from tests.support.fakes import cpu_inventory, gpu_inventory


def _plan(data: dict, inventory):  # type: ignore[no-untyped-def]
    spec = parse_spec(data)
    engine = choose_engine(spec, inventory)
    return build_plan(spec, resolve_engine_settings(spec, engine), inventory, "/models/m",
                      "/venv/bin/python")


def test_gpu_box_gets_one_replica_per_gpu_pinned_by_uuid() -> None:
    inv = gpu_inventory(4)
    plan = _plan({}, inv)
    assert plan.engine.engine == "gpu"
    assert [r.port for r in plan.replicas] == [8100, 8101, 8102, 8103]
    for replica, gpu in zip(plan.replicas, inv.gpus, strict=True):
        assert replica.env["CUDA_VISIBLE_DEVICES"] == gpu.uuid
        assert replica.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert replica.gpu_uuid == gpu.uuid and replica.device == gpu.uuid
        assert "--quantization" not in replica.argv
        assert "--enforce-eager" not in replica.argv
        assert replica.env["HF_HUB_OFFLINE"] == "1"


def test_gpu_replica_count_may_be_lower_but_not_higher() -> None:
    assert len(_plan({"replicas": 2}, gpu_inventory(4)).replicas) == 2
    with pytest.raises(DeviceError, match="only 4 GPU"):
        _plan({"replicas": 5}, gpu_inventory(4))


def test_engine_gpu_without_gpus_is_an_error() -> None:
    with pytest.raises(DeviceError, match="no GPU was found") as caught:
        _plan({"engine": "gpu"}, cpu_inventory())
    assert "engine: cpu" in caught.value.hint


def test_cpu_replicas_pinned_one_per_core_two_at_most_under_auto() -> None:
    plan = _plan({}, cpu_inventory(cores=8))
    assert plan.engine.engine == "cpu"
    assert len(plan.replicas) == 2
    assert [r.env["VLLM_CPU_OMP_THREADS_BIND"] for r in plan.replicas] == ["0", "1"]
    assert all("--enforce-eager" in r.argv and "float32" in r.argv for r in plan.replicas)
    assert all(r.env["VLLM_CPU_KVCACHE_SPACE"] == "1" for r in plan.replicas)


def test_cpu_auto_on_one_core_is_one_replica() -> None:
    assert len(_plan({}, cpu_inventory(cores=1)).replicas) == 1


def test_explicit_cpu_count_wraps_cores() -> None:
    plan = _plan({"replicas": 3}, cpu_inventory(cores=2))
    assert [r.cpu_core for r in plan.replicas] == [0, 1, 0]


def test_engine_cpu_on_gpu_box_uses_cpu() -> None:
    plan = _plan({"engine": "cpu"}, gpu_inventory(2))
    assert plan.engine.engine == "cpu"
    assert all(r.gpu_uuid is None for r in plan.replicas)


def test_argv_carries_settings_and_extra_args() -> None:
    plan = _plan({"model": {"served_name": "m1"}, "vllm": {"max_num_seqs": 7,
                  "extra_args": ["--seed", "3"]}}, cpu_inventory())
    argv = plan.replicas[0].argv
    assert argv[:3] == ("/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    assert argv[argv.index("--served-model-name") + 1] == "m1"
    assert argv[argv.index("--max-num-seqs") + 1] == "7"
    assert argv[argv.index("--model") + 1] == "/models/m"
    assert argv[-2:] == ("--seed", "3")


def test_a_replica_may_have_its_own_vllm_settings() -> None:
    plan = _plan({"replicas": 2, "gpu": {"replicas_per_gpu": 2},
                  "vllm": {"extra_args": ["--seed", "3"], "replicas": [
                      {}, {"max_num_seqs": 16, "gpu_memory_utilization": 0.3,
                           "extra_args": ["--enforce-eager"]}]}}, gpu_inventory(1))
    first, second = (r.argv for r in plan.replicas)
    assert first[first.index("--max-num-seqs") + 1] == "64"
    assert first[first.index("--gpu-memory-utilization") + 1] == "0.45"
    assert "--enforce-eager" not in first and first[-2:] == ("--seed", "3")
    assert second[second.index("--max-num-seqs") + 1] == "16"
    assert second[second.index("--gpu-memory-utilization") + 1] == "0.3"
    assert second[-3:] == ("--seed", "3", "--enforce-eager")
    # The controller weighs replicas by the slots they run with.
    assert [r.max_num_seqs for r in plan.replicas] == [64, 16]
    assert [r.max_num_seqs for r in ClusterState.from_plan(plan, None).replicas] == [64, 16]
    cpu = _plan({"replicas": 2, "vllm": {"replicas": [{"cpu_kvcache_space_gib": 2}]}},
                cpu_inventory())
    assert [r.env["VLLM_CPU_KVCACHE_SPACE"] for r in cpu.replicas] == ["2", "1"]


@pytest.mark.parametrize(("data", "words"), [
    ({"replicas": 1, "vllm": {"replicas": [{}, {"max_num_seqs": 8}]}},
     "vllm.replicas lists 2 replicas, but the fleet has 1"),
    ({"engine": "sim", "vllm": {"replicas": [{"max_num_seqs": 8}]}},
     "this fleet's engine is sim"),
])
def test_per_replica_vllm_settings_that_cannot_apply_are_refused(data: dict, words: str) -> None:
    with pytest.raises(SpecError, match=words) as caught:
        _plan(data, cpu_inventory())
    assert caught.value.hint


def test_a_pooling_model_runs_vllms_pooling_runner_and_warms_with_embeddings() -> None:
    plan = _plan({"model": {"runner": "pooling"}, "controller": {"warmup": {"enabled": True}}},
                 cpu_inventory())
    argv = plan.replicas[0].argv
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert plan.warmup is not None and plan.warmup.runner == "pooling"
    assert "--runner" not in _plan({}, cpu_inventory()).replicas[0].argv


def test_replica_ports_clashing_with_gateway_are_rejected() -> None:
    with pytest.raises(SpecError, match="clashes with gateway.port"):
        _plan({"ports": {"replica_base": 8079}}, cpu_inventory())


def test_replica_ports_past_65535_are_rejected() -> None:
    with pytest.raises(SpecError, match="no room"):
        _plan({"ports": {"replica_base": 65535}, "replicas": 2}, cpu_inventory())


def test_gateway_url_for_wildcard_host() -> None:
    plan = _plan({"gateway": {"host": "0.0.0.0", "port": 9000}}, cpu_inventory())
    assert plan.gateway_url == "http://127.0.0.1:9000"


def test_lookup_of_unknown_replica_lists_names() -> None:
    plan = _plan({}, cpu_inventory())
    with pytest.raises(SpecError) as caught:
        plan.replica("replica-9")
    assert "replica-0, replica-1" in caught.value.hint


@pytest.mark.parametrize(("data", "inventory"), [({"engine": "gpu"}, gpu_inventory(2)),
                                                 ({"engine": "cpu"}, cpu_inventory(cores=2))])
def test_priority_classes_run_vllm_with_the_priority_policy(data: dict, inventory) -> None:  # type: ignore[no-untyped-def]
    off = _plan(data, inventory)
    on = _plan({**data, "priority": {"enabled": True}}, inventory)
    for replica in off.replicas:
        assert "--scheduling-policy" not in replica.argv
    for replica in on.replicas:
        flag = replica.argv.index("--scheduling-policy")
        assert replica.argv[flag + 1] == "priority"


def test_a_simulated_fleet_with_classes_simulates_the_priority_policy() -> None:
    plan = _plan({"engine": "sim", "replicas": 2, "priority": {"enabled": True}},
                 cpu_inventory())
    for replica in plan.replicas:
        settings = replica.argv[replica.argv.index("--settings") + 1]
        assert '"scheduling_policy":"priority"' in settings
