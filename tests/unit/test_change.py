"""What `fleet apply` plans for a change of spec (router.render.change), without servers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.config.plan import build_plan, choose_engine
from router.config.spec import parse_spec, resolve_engine_settings
from router.disk.keys import KeyStore
from router.disk.paths import RuntimePaths
from router.host.devices import Inventory
from router.render.change import ChangePlan, ClusterSide, key_changes, plan_change
from router.render.files import render_all
from router.render.programs import programs
from router.runtime.apply import in_flight
from tests.support.fakes import cpu_inventory, gpu_inventory
from tests.unit.test_render import MACHINE as MACHINE_WITHOUT_NJS

# Priority classes and affinity need njs: the renderer checks it is there.
MACHINE = replace(MACHINE_WITHOUT_NJS, nginx_modules={
    "ngx_http_js_module": "/usr/lib/nginx/modules/ngx_http_js_module.so"})

ROOT = Path("/var/lib/llm-fleet")
PATHS = RuntimePaths(ROOT)


def side(inventory: Inventory | None = None, **data: Any) -> ClusterSide:
    inventory = inventory or cpu_inventory(4)
    spec = parse_spec({"runtime_dir": str(ROOT), "engine": "sim", "replicas": 3, **data})
    settings = resolve_engine_settings(spec, choose_engine(spec, inventory))
    plan = build_plan(spec, settings, inventory, "/models/m", MACHINE.python)
    return ClusterSide(plan, render_all(plan, PATHS, MACHINE, KeyStore(keys=())),
                       tuple(programs(plan, PATHS, MACHINE)))


def change(old: dict[str, Any], new: dict[str, Any],
           inventory: Inventory | None = None) -> ChangePlan:
    return plan_change(side(inventory, **old), side(inventory, **new))


def test_the_same_spec_is_no_change() -> None:
    plan = change({}, {})
    assert plan.empty
    assert plan.describe() == ["no change: the running cluster already runs this spec"]


def test_a_gateway_setting_reloads_nginx_and_restarts_nothing() -> None:
    plan = change({}, {"limits": {"concurrent": 8}, "gateway": {"read_timeout_s": 30}})
    assert plan.gateway and not plan.refused
    assert (plan.roll, plan.add, plan.remove, plan.restart) == ((), (), (), ())
    assert not plan.controller
    assert "no replica is restarted" in plan.describe()


def test_a_replica_setting_rolls_every_replica_then_restarts_the_controller() -> None:
    plan = change({}, {"sim": {"defaults": {"max_num_seqs": 8}}})
    assert plan.roll == ("replica-0", "replica-1", "replica-2")
    assert plan.controller and not plan.gateway
    assert plan.fewest_in_rotation() == 2
    text = "\n".join(plan.describe())
    assert "sim.defaults.max_num_seqs: 256 -> 8" in text
    assert text.index("roll replica-0") < text.index("roll replica-2") < text.index("controller")
    assert "at least 2 of 3 replica(s) in rotation" in text


def test_a_per_replica_override_rolls_only_that_replica() -> None:
    plan = change({}, {"sim": {"replicas": [{}, {"speed": 0.5}]}})
    assert plan.roll == ("replica-1",)


def test_more_replicas_start_only_the_new_ones_and_fewer_stop_the_last() -> None:
    grow = change({}, {"replicas": 4})
    assert grow.add == ("replica-3",) and grow.roll == () and grow.controller
    assert grow.prometheus_files == ("prometheus.yml",)
    assert grow.fewest_in_rotation() == 3
    shrink = change({"replicas": 4}, {"replicas": 2})
    assert shrink.remove == ("replica-2", "replica-3") and shrink.roll == ()
    assert shrink.fewest_in_rotation() == 2


def test_a_program_setting_restarts_that_program_alone() -> None:
    plan = change({}, {"prometheus": {"retention": "7d"}})
    assert plan.restart == ("prometheus",)
    assert plan.roll == () and not plan.gateway and not plan.controller


def test_a_controller_setting_restarts_only_the_controller() -> None:
    plan = change({}, {"controller": {"evaluate_interval_s": 5}})
    assert plan.controller and plan.roll == () and plan.restart == ()


def test_shedding_and_shares_reload_the_gateway_and_restart_the_controller() -> None:
    """nginx reads the flags the controller writes: both take the change."""
    classes = {"priority": {"enabled": True}, "auth": {"enabled": True}}
    shed = {**classes, "priority": {"enabled": True, "shed_queue_wait_s": {"batch": 5}}}
    shares = {**classes, "priority": {"enabled": True, "fair_share": True}}
    for old, new in ((classes, shed), (shed, classes), (classes, shares)):
        plan = change(old, new)
        assert plan.gateway and plan.controller and plan.roll == (), (old, new)


def test_budgets_reload_the_gateway_and_restart_the_controller() -> None:
    keyed = {"auth": {"enabled": True}}
    counted = {**keyed, "budgets": {"enabled": True}}
    capped = {**keyed, "budgets": {"enabled": True, "tokens_per_min": 10_000}}
    for old, new in ((keyed, counted), (counted, keyed)):
        plan = change(old, new)
        assert plan.gateway and plan.controller and plan.roll == (), (old, new)
    # The default budget is the ledger's alone: nginx.conf does not change.
    plan = change(counted, capped)
    assert plan.controller and not plan.gateway and plan.roll == ()


@pytest.mark.parametrize(("new", "named"), [
    ({"gateway": {"port": 9999}}, "gateway.port: 8080 -> 9999"),
    ({"ports": {"replica_base": 9100}}, "ports.replica_base: 8100 -> 9100"),
    ({"engine": "cpu"}, "engine: 'sim' -> 'cpu'"),
    ({"prometheus": {"enabled": False}}, "prometheus.enabled: True -> False"),
    ({"gateway": {"keepalive": 8}}, "gateway.keepalive: 64 -> 8"),
    ({"gateway": {"balance": "round_robin"}}, "gateway.balance"),
])
def test_what_a_running_cluster_cannot_take_is_refused_by_key(new: dict[str, Any],
                                                               named: str) -> None:
    plan = change({}, new)
    assert plan.refused and named in plan.refused[0]
    assert "fleet down" in plan.refused[0]
    assert (plan.roll, plan.gateway) == ((), False)
    assert "refused, nothing would be touched:" in plan.describe()


def test_every_refused_key_is_named() -> None:
    plan = change({}, {"gateway": {"port": 9999, "status_port": 9998}})
    assert len(plan.refused) == 2


def test_a_gpu_fleet_rolls_on_a_vllm_argument() -> None:
    plan = change({"engine": "gpu", "replicas": 2}, {"engine": "gpu", "replicas": 2,
                                                     "vllm": {"max_num_seqs": 32}},
                  inventory=gpu_inventory(2))
    assert plan.roll == ("replica-0", "replica-1")
    assert plan.controller  # the pace probes weigh replicas by their slots


def test_a_new_served_name_is_warned_about() -> None:
    plan = change({}, {"model": {"served_name": "other"}})
    assert any("served model name changes" in w for w in plan.warnings)


def test_key_changes_flatten_sections_and_keep_lists_whole() -> None:
    old = parse_spec({"runtime_dir": str(ROOT), "engine": "sim"})
    new = parse_spec({"runtime_dir": str(ROOT), "engine": "sim",
                      "sim": {"replicas": [{"speed": 2}]}, "limits": {"burst": 3}})
    assert [str(k) for k in key_changes(old, new)] == [
        "limits.burst: 0 -> 3", "sim.replicas: [] -> [{'speed': 2}]"]


def test_in_flight_sums_running_and_waiting_over_engines() -> None:
    text = ('# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{engine="0"} 2.0\n'
            'vllm:num_requests_running{engine="1"} 1.0\n'
            '# TYPE vllm:num_requests_waiting gauge\n'
            'vllm:num_requests_waiting{engine="0"} 4.0\n')
    assert in_flight(text) == 7
    assert in_flight("# nothing of vLLM here\n") is None
    assert in_flight("not { metrics") is None


def test_an_apply_holds_its_lock_and_shows_its_progress_until_it_ends(tmp_path: Path) -> None:
    import json
    import os

    from router.errors import ClusterError
    from router.runtime.applying import RolloutProgress, apply_lock, read_rollout

    paths = RuntimePaths(tmp_path)
    assert read_rollout(paths) is None
    with apply_lock(paths):
        progress = RolloutProgress("rolling replica-1: draining", "ab12cd34", ("replica-0",),
                                   pid=os.getpid())
        progress.save(paths)
        assert read_rollout(paths) == progress
        with pytest.raises(ClusterError, match="another `fleet apply`"), apply_lock(paths):
            pass
    assert read_rollout(paths) is None and not paths.rollout_json.exists()
    # An apply killed before it could remove its file is not shown as running.
    paths.rollout_json.write_text(json.dumps({"step": "x", "pid": 2 ** 22 + 1}))
    assert read_rollout(paths) is None
