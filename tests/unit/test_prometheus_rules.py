"""Recording and alert rules: promtool accepts them and its unit tests pass, with
the alert thresholds taken from the spec."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from router import REPO_ROOT
from router.config.spec import parse_spec
from router.disk.paths import ALERT_RULES, RECORDING_RULES
from router.render.prometheus import recording_rules, render_alert_rules, render_prometheus
from tests.support.harness import plan_for

RULE_TESTS = REPO_ROOT / "prometheus" / "tests"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by deploy/setup.sh"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The rule files as `fleet render` writes them for the default spec."""
    (tmp_path / RECORDING_RULES).write_text(recording_rules())
    (tmp_path / ALERT_RULES).write_text(render_alert_rules(parse_spec({})))
    return tmp_path


def test_promtool_check_rules(rules_dir: Path) -> None:
    proc = _promtool("check", "rules", str(rules_dir / RECORDING_RULES),
                     str(rules_dir / ALERT_RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("test_file", sorted(RULE_TESTS.glob("*.test.yml")),
                         ids=lambda p: p.stem)
def test_promtool_unit_tests(rules_dir: Path, test_file: Path) -> None:
    shutil.copy(test_file, rules_dir)
    proc = _promtool("test", "rules", str(rules_dir / test_file.name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = yaml.safe_load(render_alert_rules(parse_spec({})))
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    tests = yaml.safe_load((RULE_TESTS / "alerts.test.yml").read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert names == fires, f"alerts never seen firing: {sorted(names - fires)}"
    assert names == quiet, f"alerts never seen quiet: {sorted(names - quiet)}"


def test_alert_thresholds_come_from_the_spec() -> None:
    spec = parse_spec({"alerts": {"ttft_p99_slo_s": 0.75, "gpu_temperature_max_c": 78},
                       "controller": {"min_reload_interval_s": 40}})
    rules = {r["alert"]: r for g in yaml.safe_load(render_alert_rules(spec))["groups"]
             for r in g["rules"]}
    assert rules["FleetReplicaTtftOverSlo"]["expr"].endswith("> 0.75")
    assert "> 78.0" in rules["FleetGpuTooHot"]["expr"]
    # Three minimum reload intervals plus two evaluations before "stuck".
    assert rules["FleetWeightsNotApplied"]["expr"].rstrip().endswith("> 124")
    # Prometheus's own templates are left for Prometheus to fill.
    assert "{{ $labels.replica }}" in rules["FleetReplicaDown"]["annotations"]["summary"]


def test_prometheus_yml_loads_both_rule_files(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 2, 18100)
    config = yaml.safe_load(render_prometheus(plan))
    assert config["rule_files"] == [RECORDING_RULES, ALERT_RULES]
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    assert {"vllm", "controller", "gateway", "gateway_log", "prometheus"} <= jobs
