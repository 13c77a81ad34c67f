"""Golden-file tests of every rendered config.

Regenerate after an intended template change with
``UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from router.config.plan import ClusterPlan, build_plan, choose_engine
from router.config.spec import parse_spec, resolve_engine_settings
from router.disk.keys import KeyStore
from router.disk.paths import RuntimePaths
from router.errors import EnvironmentError_, RenderError
from router.host.machine import MachineFacts, console_root, stage_console
from router.render.files import render_all
from router.render.nginx import render_nginx
from router.render.programs import render_supervisord
from router.render.prometheus import recording_rules, render_alert_rules
from router.render.upstream import render_upstream
from tests.support.fakes import cpu_inventory, gpu_inventory

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROOT = Path("/var/lib/llm-fleet")
# The machine the golden files were rendered for: a package install under
# /opt/llm-fleet, started by an unprivileged user.
MACHINE = MachineFacts(
    run_user=None,
    console_root=Path("/opt/llm-fleet/nginx/console"),
    mtail_programs=Path("/opt/llm-fleet/nginx/mtail"),
    python="/opt/llm-fleet/bin/python",
    binaries={"nginx": "/usr/sbin/nginx", "prometheus": "/usr/bin/prometheus",
              "prometheus-nginx-exporter": "/usr/bin/prometheus-nginx-exporter",
              "mtail": "/usr/bin/mtail", "logrotate": "/usr/sbin/logrotate"},
)
NO_KEYS = KeyStore(keys=())


def _plan(data: dict, inventory) -> ClusterPlan:  # type: ignore[no-untyped-def]
    spec = parse_spec({"runtime_dir": str(ROOT), **data})
    settings = resolve_engine_settings(spec, choose_engine(spec, inventory))
    return build_plan(spec, settings, inventory, "/models/m", "/opt/llm-fleet/bin/python")


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize(("case", "data", "inventory"), [
    ("cpu2", {}, cpu_inventory(2)),
    ("gpu4", {}, gpu_inventory(4)),
    ("secure", {"auth": {"enabled": True},
                "limits": {"requests_per_s": 20, "burst": 10, "concurrent": 8}}, cpu_inventory(2)),
])
def test_rendered_files_match_golden(case: str, data: dict, inventory) -> None:  # type: ignore[no-untyped-def]
    plan = _plan(data, inventory)
    rendered = render_all(plan, RuntimePaths(ROOT), MACHINE, NO_KEYS)
    assert set(rendered.files) == {"nginx.conf", "upstream.conf", "api-keys.conf",
                                   "prometheus.yml", "supervisord.conf", "spec.json",
                                   "recording.rules.yml", "alerts.rules.yml", "logrotate.conf"}
    assert rendered.private == {"api-keys.conf"}
    # The rule files have promtool tests of their own (test_prometheus_rules.py).
    assert rendered.files.pop("recording.rules.yml") == recording_rules()
    assert rendered.files.pop("alerts.rules.yml") == render_alert_rules(plan.spec)
    # spec.json holds machine paths (the model cache under $HOME): it must
    # reproduce the spec, not match a golden file.
    assert parse_spec(json.loads(rendered.files.pop("spec.json"))) == plan.spec
    for name, text in rendered.files.items():
        _check(f"{case}.{name}", text)


def _upstream(plan: ClusterPlan) -> str:
    return render_upstream(plan.spec.gateway, plan.replicas).text


def test_upstream_version_follows_content() -> None:
    plan = _plan({}, gpu_inventory(2))
    first = render_upstream(plan.spec.gateway, plan.replicas)
    same = render_upstream(plan.spec.gateway, plan.replicas)
    other = render_upstream(plan.spec.gateway, plan.replicas, weights={"replica-0": 9})
    assert first.version == same.version != other.version
    assert f'default "{first.version}";' in first.text


def test_upstream_keeps_least_conn_before_keepalive_and_zone() -> None:
    text = _upstream(_plan({}, gpu_inventory(2)))
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    directives = [line.split()[0].rstrip(";") for line in lines]
    assert directives.index("zone") < directives.index("least_conn") < directives.index("keepalive")


def test_round_robin_upstream_has_no_least_conn_and_its_own_version() -> None:
    plan = _plan({"gateway": {"balance": "round_robin"}}, gpu_inventory(2))
    robin = render_upstream(plan.spec.gateway, plan.replicas)
    least = render_upstream(_plan({}, gpu_inventory(2)).spec.gateway, plan.replicas)
    assert "least_conn;" not in robin.text and "least_conn;" in least.text
    assert robin.version != least.version


def test_fleet_status_needs_the_controller_not_the_console() -> None:
    paths = RuntimePaths(ROOT)
    no_console = render_nginx(_plan({"console": {"enabled": False}}, cpu_inventory(1)),
                              paths, MACHINE)
    assert "location = /fleet/status" in no_console and "location = / {" not in no_console
    no_controller = render_nginx(
        _plan({"controller": {"enabled": False}}, cpu_inventory(1)), paths, MACHINE)
    assert "location = /fleet/status" not in no_controller


def test_upstream_weights_down_and_reasons() -> None:
    plan = _plan({}, gpu_inventory(3))
    text = render_upstream(plan.spec.gateway, plan.replicas, weights={"replica-1": 7},
                                  down=frozenset({"replica-2"}),
                                  reasons={"replica-1": "p99 2.1x fleet median"}).text
    assert "server 127.0.0.1:8101 weight=7 " in text
    assert "# replica-1 on GPU-00000001-aaaa-bbbb-cccc-dddddddddddd: p99 2.1x fleet median" in text
    assert "server 127.0.0.1:8102 weight=50 max_fails=2 fail_timeout=10s down;" in text


@pytest.mark.parametrize("weight", [0, 101, -3])
def test_weight_outside_nginx_range_is_refused(weight: int) -> None:
    with pytest.raises(RenderError, match="outside"):
        plan = _plan({}, gpu_inventory(2))
        render_upstream(plan.spec.gateway, plan.replicas, weights={"replica-0": weight})


def test_prometheus_disabled_renders_no_prometheus_files() -> None:
    plan = _plan({"prometheus": {"enabled": False}}, cpu_inventory(2))
    rendered = render_all(plan, RuntimePaths(ROOT), MACHINE, NO_KEYS)
    assert "prometheus.yml" not in rendered.files
    assert "[program:prometheus]" not in rendered.files["supervisord.conf"]


def test_supervisor_escapes_percent_signs() -> None:
    plan = _plan({"vllm": {"extra_args": ["--chat-template-content-format", "50%"]}},
                 cpu_inventory(1))
    text = render_supervisord(plan, RuntimePaths(ROOT), MACHINE)
    assert "50%%" in text


def test_ipv6_gateway_listen() -> None:
    plan = _plan({"gateway": {"host": "::1"}}, cpu_inventory(1))
    assert "listen [::1]:8080;" in render_nginx(plan, RuntimePaths(ROOT), MACHINE)


def test_console_is_served_from_the_checkout_or_a_world_readable_copy(tmp_path: Path) -> None:
    source = tmp_path / "checkout" / "console"
    source.mkdir(parents=True)
    (source / "index.html").write_text("<!doctype html>")
    staging = tmp_path / "cache" / "console"
    # Workers that run as we do read the checkout itself.
    assert console_root(None, source, staging) == source
    # Workers that drop to nobody read a copy named by its content.
    staged = console_root("nobody nogroup", source, staging)
    assert staged.parent == staging
    machine = MachineFacts(run_user="nobody nogroup", console_root=staged,
                           mtail_programs=MACHINE.mtail_programs, python=MACHINE.python)
    stage_console(machine, source, staging)
    assert (staged / "index.html").read_text() == "<!doctype html>"
    assert staged.stat().st_mode & 0o777 == 0o755
    assert (staged / "index.html").stat().st_mode & 0o777 == 0o644
    # New content, new folder: a running gateway keeps the files it serves.
    (source / "index.html").write_text("<!doctype html><p>v2")
    assert console_root("nobody nogroup", source, staging) != staged


def test_affinity_renders_the_ring_and_an_upstream_per_replica_and_needs_njs() -> None:
    plan = _plan({"gateway": {"affinity": "auto"}}, gpu_inventory(4))
    machine = MachineFacts(**{**MACHINE.__dict__, "nginx_modules": {
        "ngx_http_js_module": "/usr/lib/nginx/modules/ngx_http_js_module.so"}})
    conf = render_nginx(plan, RuntimePaths(ROOT), machine)
    assert conf.startswith("# nginx.conf") and "load_module /usr/lib/nginx/modules/" in conf
    assert "js_content fleet_affinity.auto;" in conf and "location @chat_affinity" in conf
    upstream = render_upstream(plan.spec.gateway, plan.replicas, down=frozenset({"replica-0"}),
                               shedding={"replica-1": "pressure 1.2 against 0.3"}).text
    assert ('default "replica-0 50 down;replica-1 50 shed;replica-2 50 up;replica-3 50 up";'
            in upstream)
    own = upstream[upstream.index("upstream fleet_replica-2 {"):]
    own = own[:own.index("}")]
    servers = [line.split()[1] for line in own.splitlines() if line.strip().startswith("server")]
    # Its own address first; the others not down as backups.
    assert servers == [plan.replicas[2].address, plan.replicas[1].address,
                       plan.replicas[3].address]
    assert "Keyed requests of replica-1; shedding: pressure 1.2 against 0.3." in upstream
    main = upstream[:upstream.index("map $host $fleet_affinity_ring")]
    assert sum(line.endswith(" down;") for line in main.splitlines()) == 1
    with pytest.raises(EnvironmentError_, match="ngx_http_js_module is not installed") as caught:
        render_nginx(plan, RuntimePaths(ROOT), MACHINE)
    assert "libnginx-mod-http-js" in caught.value.hint
    assert "gateway.affinity: off" in caught.value.hint


def test_a_missing_js_module_names_each_setting_that_needs_it() -> None:
    plan = _plan({"engine": "sim", "replicas": 2, "priority": {"enabled": True},
                  "gateway": {"affinity": "session"}}, cpu_inventory(2))
    with pytest.raises(EnvironmentError_) as caught:
        render_nginx(plan, RuntimePaths(ROOT), MACHINE)
    assert "(needed by gateway.affinity and priority.enabled)" in caught.value.message
    assert caught.value.hint.endswith("gateway.affinity: off and priority.enabled: false")
