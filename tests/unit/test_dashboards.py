"""The Grafana dashboards and provisioning: generated, well formed, one datasource,
and every query is PromQL that Prometheus accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from router import REPO_ROOT
from router.render import dashboards
from tests.support.grafana import dashboard_files, load, queries, substitute

PROVISIONING = REPO_ROOT / "grafana" / "provisioning"


def _provisioned_uid() -> str:
    data = yaml.safe_load((PROVISIONING / "datasources" / "llm-fleet.yml").read_text())
    [source] = data["datasources"]
    assert source["type"] == "prometheus"
    uid: str = source["uid"]
    return uid


def test_committed_dashboards_are_the_generated_ones(tmp_path: Path) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        dashboards.write_all()
    dashboards.write_all(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == [p.name for p in dashboard_files()]
    for name in generated:
        assert (tmp_path / name).read_text() == (dashboards.DASHBOARD_DIR / name).read_text(), (
            f"grafana/dashboards/{name} differs from router/dashboards.py; "
            "run `python -m router.render.dashboards`")


def test_four_dashboards_with_fixed_uids() -> None:
    boards = [load(p) for p in dashboard_files()]
    assert {b["uid"] for b in boards} == {
        "llm-fleet-overview", "llm-fleet-replicas", "llm-fleet-gpus", "llm-fleet-controller"}
    for board in boards:
        assert board["id"] is None
        assert "__inputs" not in board


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    uid = _provisioned_uid()
    text = path.read_text()
    assert "${DS_" not in text and "DS_PROMETHEUS" not in text
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} runs past the 24-column grid"
        cells = {(grid["x"] + dx, grid["y"] + dy)
                 for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
        assert panel["description"], f"{panel['title']} has no description"
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == {"type": "prometheus", "uid": uid}
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == {"type": "prometheus", "uid": uid}


def test_every_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by deploy/setup.sh"
    rules = []
    for path in dashboard_files():
        for i, query in enumerate(queries(path)):
            rules.append({"record": f"check:{path.stem}:{i}",
                          "expr": substitute(query.expr, "1m")})
    rule_file = tmp_path / "panels.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def test_dashboard_provider_and_datasource_provisioning() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "llm-fleet.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert provider["allowUiUpdates"] is False
    assert _provisioned_uid() == dashboards.DATASOURCE_UID
