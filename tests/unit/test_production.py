"""The production path: docker-compose (validated by Debian's docker-compose, no
Docker engine needed), systemd units (systemd-analyze verify) and the
keepalived pair (keepalived -t)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from router import REPO_ROOT
from router.config.plan import build_plan
from router.config.spec import (
    EXAMPLE_SPEC,
    ClusterSpec,
    GatewaySpec,
    load_spec,
    parse_spec,
    resolve_engine_settings,
)
from router.disk.paths import DiskUse, RuntimePaths, disk_use
from router.errors import RenderError, SpecError
from router.host.machine import detect
from router.render import compose
from router.render.keepalived import render_keepalived
from router.render.logrotate import render_logrotate
from router.render.programs import programs
from router.runtime import units
from router.runtime.configs import check_keepalived, write_checked
from tests.support.cli import fleet
from tests.support.fakes import cpu_inventory, gpu_inventory
from tests.support.fleet import gateway_metrics_ports
from tests.support.harness import free_port

REFERENCE_GPUS = 4


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                  else None)
    assert path, f"{name} is installed by deploy/setup.sh --dev"
    return path


def _compose_config(compose_file: Path) -> dict[str, object]:
    """`docker-compose config`: parses, interpolates and validates the file."""
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "test-only"}
    proc = subprocess.run([_tool("docker-compose"), "-f", str(compose_file), "config"],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, object] = yaml.safe_load(proc.stdout)
    return config


def test_committed_compose_files_are_the_rendered_ones() -> None:
    rendered = compose.render_compose(load_spec(EXAMPLE_SPEC), REFERENCE_GPUS, REPO_ROOT)
    assert (REPO_ROOT / compose.COMPOSE_FILE).read_text() == rendered.compose, (
        "docker-compose.yml is stale; run `fleet render compose --gpus 4`")
    assert (REPO_ROOT / compose.GATEWAY_SPEC).read_text() == rendered.gateway_spec


def test_committed_compose_validates_and_mounts_only_repository_files() -> None:
    config = _compose_config(REPO_ROOT / compose.COMPOSE_FILE)
    services = config["services"]
    assert isinstance(services, dict)
    replicas = [name for name in services if name.startswith("replica-")]
    assert len(replicas) == REFERENCE_GPUS
    for index, name in enumerate(sorted(replicas)):
        service = services[name]
        assert service["restart"] == "always"
        assert "ports" not in service, f"{name} must not be published"
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [str(index)] and device["capabilities"] == ["gpu"]
        assert "--served-model-name" in service["command"]
        assert service["healthcheck"]["test"][-1].endswith("timeout=5)")
    gateway = services["gateway"]
    build = gateway["build"]
    assert (Path(build["context"]) / build["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/") and "huggingface" not in source:
                assert Path(source).exists(), f"{source} is mounted but not in the repository"
    published = [str(p) for p in gateway["ports"]]
    assert any(p.startswith("127.0.0.1:3000:") for p in published), published


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_compose_for_other_gpu_counts_validates(tmp_path: Path, gpus: int) -> None:
    rendered = compose.render_compose(load_spec(EXAMPLE_SPEC), gpus, tmp_path)
    (tmp_path / compose.COMPOSE_FILE).write_text(rendered.compose)
    (tmp_path / compose.GATEWAY_SPEC).parent.mkdir(parents=True)
    (tmp_path / compose.GATEWAY_SPEC).write_text(rendered.gateway_spec)
    services = _compose_config(tmp_path / compose.COMPOSE_FILE)["services"]
    assert isinstance(services, dict)
    assert sorted(n for n in services if n.startswith("replica-")) == sorted(
        f"replica-{i}" for i in range(gpus))
    external = yaml.safe_load(rendered.gateway_spec)["external_replicas"]
    assert [r["gpu_index"] for r in external] == list(range(gpus))


def test_gateway_container_renders_the_bare_metal_config(tmp_path: Path) -> None:
    """The container runs `fleet up --foreground` on deploy/compose/gateway.yaml:
    the same templates and checks as bare metal, no copy of nginx.conf."""
    data = yaml.safe_load((REPO_ROOT / compose.GATEWAY_SPEC).read_text())
    # Free ports and a temporary runtime folder so nginx -t can run here.
    data.update(runtime_dir=str(tmp_path / "rt"), controller={"port": free_port()},
                prometheus={"port": free_port()}, gateway_metrics=gateway_metrics_ports())
    data["gateway"] = {**data["gateway"], "port": free_port(), "status_port": free_port()}
    spec = parse_spec(data)
    plan = build_plan(spec, resolve_engine_settings(spec, "external"), gpu_inventory(4),
                      "unused", "python3")
    assert [r.address for r in plan.replicas] == [f"172.28.0.{10 + i}:8000" for i in range(4)]
    assert all(r.external and r.gpu_uuid for r in plan.replicas)
    assert plan.gpu_exporter
    rendered = write_checked(plan, RuntimePaths(tmp_path / "rt"))  # nginx -t, promtool
    assert "server 172.28.0.13:8000 weight=50" in rendered.files["upstream.conf"]
    names = [p.name for p in programs(plan, RuntimePaths(tmp_path / "rt"), detect())]
    assert names == ["gateway", "log-rotation", "prometheus", "controller", "gpu-exporter",
                     "nginx-exporter", "log-exporter"]
    dockerfile = (REPO_ROOT / "deploy" / "gateway" / "Dockerfile").read_text()
    assert 'CMD ["fleet", "up", "--foreground"' in dockerfile
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    copies = [p for p in tracked if p.endswith("nginx.conf") and not p.startswith("tests/")]
    assert copies == [], f"a second nginx.conf would drift from the template: {copies}"


@pytest.mark.parametrize("engine", ["cpu", "sim"])
def test_systemd_units_verify(tmp_path: Path, engine: str) -> None:
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(yaml.safe_dump({"engine": engine, "replicas": 2,
                                         "runtime_dir": str(tmp_path / "rt")}))
    written = units.write_units(load_spec(spec_file), spec_file, tmp_path / "units")
    names = {p.name for p in written}
    assert {"llm-fleet.target", "llm-fleet-prepare.service", "llm-fleet-replica@.service",
            "llm-fleet-gateway.service", "llm-fleet-controller.service"} <= names
    replica_unit = (tmp_path / "units" / "llm-fleet-replica@.service").read_text()
    assert "Restart=always" in replica_unit and "replica exec %i" in replica_unit
    target = (tmp_path / "units" / "llm-fleet.target").read_text()
    assert "llm-fleet-replica@0.service llm-fleet-replica@1.service" in target
    proc = subprocess.run([_tool("systemd-analyze"), "verify", "--man=no",
                           *sorted(str(p) for p in written)],
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path / "units")
    assert proc.returncode == 0, proc.stderr
    assert "llm-fleet" not in proc.stderr, proc.stderr


def _interface() -> str:
    """An interface of this machine keepalived accepts (it refuses loopback)."""
    names = sorted(name for name in os.listdir("/sys/class/net") if name != "lo")
    return names[0] if names else "eth0"


def _pair_spec(priority: int, me: str, peer: str) -> ClusterSpec:
    return parse_spec({"gateway": {"host": "0.0.0.0", "port": 8080},
                       "ha": {"enabled": True, "virtual_ip": "192.0.2.10/24",
                              "interface": _interface(), "priority": priority,
                              "unicast_src": me, "peers": [peer],
                              "pair_token_file": "/etc/llm-fleet/pair-token"}})


PAIR = {"primary": _pair_spec(150, "192.0.2.11", "192.0.2.12"),
        "backup": _pair_spec(100, "192.0.2.12", "192.0.2.11")}


@pytest.mark.parametrize("role", sorted(PAIR))
def test_rendered_keepalived_config_passes_keepalived_t(tmp_path: Path, role: str) -> None:
    config = tmp_path / "keepalived.conf"
    config.write_text(render_keepalived(PAIR[role], _tool("curl"), tmp_path / "down"))
    check_keepalived(config, _tool("keepalived"))
    text = config.read_text()
    assert "nopreempt" in text and "state BACKUP" in text
    assert f"priority {PAIR[role].ha.priority}" in text
    assert f"unicast_src_ip {PAIR[role].ha.unicast_src}" in text


def test_keepalived_t_failure_is_one_line_and_keeps_the_running_pair(tmp_path: Path) -> None:
    config = tmp_path / "keepalived.conf"
    config.write_text(render_keepalived(PAIR["primary"], _tool("curl"), tmp_path / "down")
                      .replace("virtual_router_id 51", "virtual_router_id 300"))
    with pytest.raises(RenderError) as caught:
        check_keepalived(config, _tool("keepalived"))
    assert "\n" not in caught.value.message and caught.value.hint


def test_keepalived_render_needs_a_pair() -> None:
    with pytest.raises(SpecError, match="ha.enabled is false"):
        render_keepalived(parse_spec({}), "/usr/bin/curl", Path("/run/down"))


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _rendered_check(port: int) -> int:
    """Run the health check keepalived runs, as rendered for a gateway on ``port``."""
    spec = PAIR["primary"].model_copy(update={"gateway": GatewaySpec(host="0.0.0.0", port=port)})
    text = render_keepalived(spec, _tool("curl"), Path("/run/down"))
    command = re.search(r'^\s*script "(.*)"$', text, re.MULTILINE)
    assert command is not None, text
    return subprocess.run(shlex.split(command.group(1)), capture_output=True, timeout=30,
                          check=False).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_keepalived_check_follows_the_gateway_health(status: int, healthy: bool) -> None:
    handler = type("Health", (_Health,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            code = _rendered_check(server.server_address[1])
        finally:
            server.shutdown()
            thread.join(timeout=5)
    assert (code == 0) == healthy


def test_keepalived_check_fails_when_nothing_answers() -> None:
    assert _rendered_check(free_port()) != 0


@pytest.mark.parametrize(("args", "message"), [
    (("render", "compose"), "needs --gpus N"),
    (("render", "compose", "--gpus", "0"), "need at least one GPU"),
    (("render", "systemd"), "needs --out DIR"),
    (("render", "--gpus", "2", "--out", "/tmp/x"), "--gpus is read by `fleet render compose`"),
])
def test_render_cli_errors_are_one_line_with_a_hint(args: tuple[str, ...], message: str) -> None:
    result = fleet(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert lines[1].startswith("hint: ")


def test_compose_refuses_several_replicas_per_gpu(tmp_path: Path) -> None:
    from router.errors import SpecError

    spec = parse_spec({"gpu": {"replicas_per_gpu": 2}})
    with pytest.raises(SpecError, match="one replica container per GPU") as caught:
        compose.render_compose(spec, 2, tmp_path)
    assert "fleet up" in caught.value.hint


def test_the_rendered_logrotate_config_passes_logrotate_debug(tmp_path: Path) -> None:
    """logrotate reads the rendered file and would rotate a log past its size
    (--debug: it says what it would do and touches nothing)."""
    spec = parse_spec({"engine": "sim", "replicas": 1, "runtime_dir": str(tmp_path / "rt"),
                       "logs": {"rotate_size_mb": 1}})
    plan = build_plan(spec, resolve_engine_settings(spec, "sim"), cpu_inventory(1), "unused",
                      "python3")
    paths = RuntimePaths(tmp_path / "rt")
    paths.logs_dir.mkdir(parents=True)
    paths.access_log.write_bytes(b"x" * (2 * 1024 * 1024))
    paths.logrotate_conf.parent.mkdir(parents=True)
    paths.logrotate_conf.write_text(render_logrotate(plan, paths, detect()))
    proc = subprocess.run([_tool("logrotate"), "--debug", "--state", str(tmp_path / "state"),
                           str(paths.logrotate_conf)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "log needs rotating" in proc.stderr, proc.stderr
    assert f"renaming {paths.access_log} to {paths.access_log}.1" in proc.stderr, proc.stderr


def test_disk_use_counts_logs_and_prometheus_apart(tmp_path: Path) -> None:
    paths = RuntimePaths(tmp_path)
    paths.logs_dir.mkdir()
    (paths.logs_dir / "gateway-access.log").write_bytes(b"a" * 1000)
    (paths.prometheus_data / "wal").mkdir(parents=True)
    (paths.prometheus_data / "wal" / "00000001").write_bytes(b"p" * 300)
    (tmp_path / "state.json").write_text("{}")
    use = disk_use(paths)
    assert (use.logs, use.prometheus, use.total) == (1000, 300, 1302)
    assert disk_use(RuntimePaths(tmp_path / "absent")) == DiskUse(0, 0, 0)


def test_fleet_render_keepalived_writes_a_checked_config(tmp_path: Path) -> None:
    spec = tmp_path / "pair.yaml"
    spec.write_text(yaml.safe_dump(json.loads(PAIR["backup"].model_dump_json())))
    result = fleet("render", "keepalived", "--spec", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "priority 100" in (tmp_path / "out" / "keepalived.conf").read_text()


def test_fleet_render_keepalived_without_a_pair_is_one_line() -> None:
    result = fleet("render", "keepalived", "--out", "/tmp/unused-keepalived")
    assert result.returncode != 0
    assert "error: this spec has no gateway pair" in result.stderr and "hint:" in result.stderr
