"""Render nginx, Prometheus and supervisor configs from a plan, and check them.

Templates live with their component (``nginx/``, ``prometheus/``,
``deploy/``) and hold no logic beyond loops; this module computes the view
models they read. jinja2 runs with StrictUndefined, so a missing value is a
render error, never an empty string in a config.

Rendering is pure (plan in, text out). Checking (``nginx -t``, ``promtool``)
and writing are separate functions, so a bad render never replaces a good
file: callers render into a staging folder, check, then move into place.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from router.errors import EnvironmentError_, RenderError
from router.keys import load_store, render_keys_conf
from router.plan import ClusterPlan, ReplicaPlan
from router.runtime import ALERT_RULES, RECORDING_RULES, RuntimePaths, write_atomic
from router.spec import REPO_ROOT, ClusterSpec, GatewaySpec
from router.templates import template

# Every replica starts with the same weight, in the middle of [1, 100] so the
# controller can move it both ways.
BASE_WEIGHT = 50
UPSTREAM_NAME = "replicas"
# mtail loads every program in this folder.
MTAIL_PROGRAMS = REPO_ROOT / "nginx" / "mtail"


@dataclass(frozen=True)
class UpstreamServer:
    """One `server` line of the upstream block, with why it has its weight."""

    name: str
    device: str
    address: str
    weight: int
    max_fails: int
    fail_timeout_s: int
    down: bool
    backup: bool
    reason: str

    @property
    def address_regex(self) -> str:
        return re.escape(self.address)


@dataclass(frozen=True)
class RenderedConfig:
    """The text of every config file of one cluster, keyed by file name."""

    files: dict[str, str]
    # Files holding secrets (API keys), written with mode 0600.
    private: frozenset[str] = frozenset()


CONSOLE_SOURCE = REPO_ROOT / "nginx" / "console"
# When nginx starts as root its workers run as nobody, who may not be able to
# reach a checkout under /root or a private temp folder; the console is then
# served from a root-owned, world-readable copy here, one folder per content.
CONSOLE_STAGING = Path("/var/cache/llm-fleet/console")


def _console_digest() -> str:
    digest = hashlib.sha256()
    for file in sorted(CONSOLE_SOURCE.rglob("*")):
        if file.is_file():
            digest.update(file.relative_to(CONSOLE_SOURCE).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def console_dir(workers_drop_privileges: bool) -> Path:
    """Where nginx serves the console from (see CONSOLE_STAGING)."""
    if not workers_drop_privileges:
        return CONSOLE_SOURCE
    return CONSOLE_STAGING / _console_digest()


def stage_console() -> None:
    """Copy the console where nobody can read it, when workers run as nobody."""
    target = console_dir(nginx_run_user() is not None)
    if target == CONSOLE_SOURCE or target.is_dir():
        return
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    CONSOLE_STAGING.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CONSOLE_SOURCE, staging)
    for folder in [staging, *[p for p in staging.rglob("*") if p.is_dir()]]:
        folder.chmod(0o755)
    for file in staging.rglob("*"):
        if file.is_file():
            file.chmod(0o644)
    # Both folders are llm-fleet's own; nobody must be able to enter them.
    for parent in (CONSOLE_STAGING, CONSOLE_STAGING.parent):
        parent.chmod(0o755)
    try:
        staging.rename(target)
    except OSError:
        # Another cluster staged the same content first.
        shutil.rmtree(staging, ignore_errors=True)


def nginx_run_user() -> str | None:
    """Workers drop to nobody when nginx is started as root, else run as we do."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"


class UpstreamMember(Protocol):
    """What the upstream block needs to know of a replica."""

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def address(self) -> str: ...


def upstream_servers(gw: GatewaySpec, members: Sequence[UpstreamMember],
                     weights: Mapping[str, int] | None = None,
                     down: frozenset[str] = frozenset(),
                     reasons: Mapping[str, str] | None = None) -> list[UpstreamServer]:
    weights = weights or {}
    reasons = reasons or {}
    servers = []
    for replica in members:
        weight = weights.get(replica.name, BASE_WEIGHT)
        if not 1 <= weight <= 100:
            raise RenderError(f"weight {weight} for {replica.name} is outside [1, 100]",
                              hint="nginx rejects weight=0; drain a replica with `down`")
        servers.append(UpstreamServer(
            name=replica.name,
            device=replica.device,
            address=replica.address,
            weight=weight,
            max_fails=gw.max_fails,
            fail_timeout_s=gw.fail_timeout_s,
            down=replica.name in down,
            backup=False,
            reason=reasons.get(replica.name, "initial weight"),
        ))
    return servers


@dataclass(frozen=True)
class RenderedUpstream:
    """The upstream file and the version nginx reports once it is live."""

    text: str
    version: str


def render_upstream(gw: GatewaySpec, members: Sequence[UpstreamMember],
                    weights: Mapping[str, int] | None = None,
                    down: frozenset[str] = frozenset(),
                    reasons: Mapping[str, str] | None = None,
                    provenance: str = "written by fleet up with equal weights"
                    ) -> RenderedUpstream:
    # An all-down group is still a valid config: nginx answers "no live
    # upstreams" and the gateway turns that into a JSON 503.
    servers = upstream_servers(gw, members, weights, down, reasons)
    # The version is what the status port's /fleet/config-version answers
    # once nginx runs this file: the proof that a reload took effect.
    version = hashlib.sha256(repr((servers, gw.keepalive, gw.balance)).encode()).hexdigest()[:12]
    text = template("nginx/upstream.conf.j2").render(
        servers=servers, keepalive=gw.keepalive, balance=gw.balance, provenance=provenance,
        version=version,
    )
    return RenderedUpstream(text=text, version=version)


def _limits_view(spec: ClusterSpec) -> dict[str, object]:
    limits = spec.limits
    parts = []
    if limits.requests_per_s:
        parts.append(f"{limits.requests_per_s} requests/s with a burst of {limits.burst}")
    if limits.concurrent:
        parts.append(f"{limits.concurrent} requests in flight")
    return {
        # Empty keys are not counted by nginx, so with auth on a request
        # without a valid key (already refused) never uses a slot.
        "key": "$fleet_api_key" if spec.auth.enabled else "$binary_remote_addr",
        "key_doc": "per API key" if spec.auth.enabled else "per client address",
        "requests_per_s": limits.requests_per_s,
        "burst": limits.burst,
        "concurrent": limits.concurrent,
        "summary": ("limit: " + ", ".join(parts) + (" per key" if spec.auth.enabled
                                                    else " per client address"))
        if parts else "",
    }


def render_nginx(plan: ClusterPlan, paths: RuntimePaths) -> str:
    spec = plan.spec
    gw = spec.gateway
    listen = f"[{gw.host}]:{gw.port}" if ":" in gw.host else f"{gw.host}:{gw.port}"
    run_user = nginx_run_user()
    return template("nginx/nginx.conf.j2").render(
        run_user=run_user,
        paths={
            "pid": paths.nginx_pid,
            "error_log": paths.log("nginx-error"),
            "access_log": paths.access_log,
            "temp_dir": paths.nginx_temp_dir,
        },
        gateway={
            "listen": listen,
            "status_port": gw.status_port,
            "max_body_size": gw.max_body_size,
            "max_header_size": gw.max_header_size,
            "client_timeout_s": gw.client_timeout_s,
            "connect_timeout_s": gw.connect_timeout_s,
            "read_timeout_s": gw.read_timeout_s,
            "next_upstream_tries": gw.next_upstream_tries,
            "worker_shutdown_timeout_s": gw.worker_shutdown_timeout_s,
            "worker_processes": gw.worker_processes,
        },
        auth=spec.auth.enabled,
        limits=_limits_view(spec),
        console={"root": console_dir(run_user is not None)} if spec.console.enabled else None,
        controller_port=spec.controller.port if spec.controller.enabled else None,
        upstream_conf=paths.upstream_conf,
        api_keys_conf=paths.api_keys_conf,
    )


def render_prometheus(plan: ClusterPlan) -> str:
    prom = plan.spec.prometheus
    metrics = plan.spec.gateway_metrics
    return template("prometheus/prometheus.yml.j2").render(
        scrape_interval_s=prom.scrape_interval_s,
        scrape_timeout_s=max(1, min(10, prom.scrape_interval_s)),
        rule_files=[RECORDING_RULES, ALERT_RULES],
        replicas=[{"name": r.name, "address": r.address, "device": r.device}
                  for r in plan.replicas],
        prometheus_port=prom.port,
        controller_port=plan.spec.controller.port if plan.spec.controller.enabled else None,
        gpu_exporter_port=plan.spec.gpu_exporter.port if plan.gpu_exporter else None,
        nginx_exporter_port=metrics.nginx_exporter_port if metrics.enabled else None,
        log_exporter_port=metrics.log_exporter_port if metrics.enabled else None,
    )


def recording_rules() -> str:
    """The recording rules: the same for every cluster, so a plain file."""
    return (REPO_ROOT / "prometheus" / RECORDING_RULES).read_text(encoding="utf-8")


def render_alert_rules(spec: ClusterSpec) -> str:
    alerts = spec.alerts
    # Prometheus's own alert templates use {{ }}; jinja2 fills [[ ]] here.
    return template("prometheus/alerts.rules.yml.j2", ("[[", "]]")).render(
        alerts=alerts,
        # Longer than two evaluations plus the minimum reload spacing: a
        # weight change that is merely held for its turn never fires.
        reload_stuck_s=int(max(60.0, 3 * spec.controller.min_reload_interval_s
                               + 2 * spec.controller.evaluate_interval_s)),
    )


@dataclass(frozen=True)
class Program:
    """One process supervisord runs."""

    name: str
    comment: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    # Up this long counts as started; this many failed starts and
    # supervisord gives up (FATAL) instead of spinning.
    startsecs: int = 2
    startretries: int = 10
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10

    @property
    def command(self) -> str:
        # supervisord expands %(...)s in its config: escape literal percents.
        return shlex.join(self.argv).replace("%", "%%")

    @property
    def environment(self) -> str:
        return ",".join(
            f'{key}="{value}"'.replace("%", "%%") for key, value in sorted(self.env.items())
        )


def replica_program(replica: ReplicaPlan, paths: RuntimePaths) -> Program:
    # router.launch keeps vLLM's engine processes from outliving a killed replica.
    launcher: tuple[str, ...] = (sys.executable, "-m", "router.launch",
                                 "--state", str(paths.launch_state(replica.name)))
    if replica.shares_gpu:
        launcher += ("--start-lock", str(paths.start_lock(replica.device)),
                     "--ready-url", replica.url + "/health")
    launcher += ("--",)
    return Program(
        name=replica.name,
        comment=f"vLLM replica on {replica.device}, port {replica.port}",
        argv=launcher + replica.argv,
        env=replica.env,
        # A replica that dies before this counts as a failed start; after
        # startretries of those supervisord gives up (FATAL) instead of
        # spinning on a broken model or flag.
        startsecs=10,
        startretries=5,
        stopwaitsecs=30,
    )


def gateway_program(paths: RuntimePaths) -> Program:
    return Program(
        name="gateway",
        comment="nginx, the one URL clients use",
        argv=(nginx_binary(), "-e", str(paths.log("nginx-error")), "-p", str(paths.root),
              "-c", str(paths.nginx_conf)),
        startsecs=1,
        # QUIT is nginx's graceful shutdown: open streams finish first.
        stopsignal="QUIT",
        stopwaitsecs=30,
    )


def prometheus_program(plan: ClusterPlan, paths: RuntimePaths) -> Program:
    prom = plan.spec.prometheus
    return Program(
        name="prometheus",
        comment="Prometheus, scraping every replica",
        argv=(prometheus_binary(), f"--config.file={paths.prometheus_yml}",
              f"--storage.tsdb.path={paths.prometheus_data}",
              f"--storage.tsdb.retention.time={prom.retention}",
              f"--web.listen-address=127.0.0.1:{prom.port}",
              "--web.enable-lifecycle"),
        stopwaitsecs=20,
    )


def controller_program(paths: RuntimePaths) -> Program:
    return Program(
        name="controller",
        comment="the adaptive weight controller and its admin API",
        argv=(sys.executable, "-m", "router.cli", "controller", "run",
              "--spec", str(paths.spec_json)),
        env={"PYTHONUNBUFFERED": "1"},
        stopwaitsecs=15,
    )


def gpu_exporter_program(plan: ClusterPlan, paths: RuntimePaths) -> Program:
    return Program(
        name="gpu-exporter",
        comment="NVML readings per GPU, labelled with the replica pinned to it",
        argv=(sys.executable, "-m", "router.gpu_exporter", "--port",
              str(plan.spec.gpu_exporter.port), "--state", str(paths.state_json)),
    )


def nginx_exporter_program(plan: ClusterPlan) -> Program:
    gw = plan.spec.gateway
    return Program(
        name="nginx-exporter",
        comment="nginx's stub_status counters as Prometheus metrics",
        # Debian's 0.11 build takes single-dash flags.
        argv=(nginx_exporter_binary(),
              f"-nginx.scrape-uri=http://127.0.0.1:{gw.status_port}/stub_status",
              f"-web.listen-address=127.0.0.1:{plan.spec.gateway_metrics.nginx_exporter_port}",
              # nginx may still be starting: wait for it instead of exiting.
              "-nginx.retries=30", "-nginx.retry-interval=1s"),
        startsecs=1,
    )


def log_exporter_program(plan: ClusterPlan, paths: RuntimePaths) -> Program:
    return Program(
        name="log-exporter",
        comment="mtail: per-replica requests, statuses and latency from the access log",
        argv=(mtail_binary(), "-progs", str(MTAIL_PROGRAMS),
              "-logs", str(paths.access_log),
              "-address", "127.0.0.1", "-port", str(plan.spec.gateway_metrics.log_exporter_port),
              "-emit_prog_label=false", "-logtostderr"),
        startsecs=1,
    )


def programs(plan: ClusterPlan, paths: RuntimePaths) -> list[Program]:
    progs = [replica_program(r, paths) for r in plan.replicas if not r.external]
    progs.append(gateway_program(paths))
    if plan.spec.prometheus.enabled:
        progs.append(prometheus_program(plan, paths))
    if plan.spec.controller.enabled:
        progs.append(controller_program(paths))
    if plan.gpu_exporter:
        progs.append(gpu_exporter_program(plan, paths))
    if plan.spec.gateway_metrics.enabled:
        progs.append(nginx_exporter_program(plan))
        progs.append(log_exporter_program(plan, paths))
    return progs


def render_supervisord(plan: ClusterPlan, paths: RuntimePaths) -> str:
    return template("deploy/supervisord.conf.j2").render(
        paths={
            "root": paths.root,
            "socket": paths.supervisor_socket,
            "pid": paths.supervisord_pid,
            "logs": paths.logs_dir,
        },
        programs=programs(plan, paths),
    )


def render_all(plan: ClusterPlan, paths: RuntimePaths) -> RenderedConfig:
    files = {
        paths.nginx_conf.name: render_nginx(plan, paths),
        paths.upstream_conf.name: render_upstream(plan.spec.gateway, plan.replicas).text,
        paths.api_keys_conf.name: render_keys_conf(load_store(paths.api_keys)).text,
        paths.supervisord_conf.name: render_supervisord(plan, paths),
        paths.spec_json.name: plan.spec.model_dump_json(indent=2) + "\n",
    }
    if plan.spec.prometheus.enabled:
        files[paths.prometheus_yml.name] = render_prometheus(plan)
        files[paths.recording_rules.name] = recording_rules()
        files[paths.alert_rules.name] = render_alert_rules(plan.spec)
    return RenderedConfig(files=files, private=frozenset({paths.api_keys_conf.name}))


def _binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EnvironmentError_(
        f"{name} is not installed",
        hint=f"run `make up` or `sudo deploy/setup.sh` (installs the Debian package {package})",
    )


def nginx_binary() -> str:
    return _binary("nginx", "nginx-light")


def prometheus_binary() -> str:
    return _binary("prometheus", "prometheus")


def nginx_exporter_binary() -> str:
    return _binary("prometheus-nginx-exporter", "prometheus-nginx-exporter")


def mtail_binary() -> str:
    return _binary("mtail", "mtail")


def check_nginx(conf: Path, error_log: Path) -> None:
    """Run `nginx -t` on a rendered config; raise RenderError with nginx's words."""
    proc = subprocess.run(
        [nginx_binary(), "-t", "-q", "-e", str(error_log), "-p", str(conf.parent),
         "-c", str(conf)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise RenderError(
            f"nginx rejected {conf}: {detail[0] if detail else 'exit ' + str(proc.returncode)}",
            hint="the running gateway was left as it was; fix the spec value named above",
        )


def check_prometheus(config: Path) -> None:
    """Run `promtool check config` when promtool is installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    proc = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise RenderError(f"promtool rejected {config}: {detail[-1] if detail else ''}")


def write_rendered(rendered: RenderedConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.files.items():
        write_atomic(out_dir / name, text, mode=0o600 if name in rendered.private else 0o644)


def write_checked(plan: ClusterPlan, paths: RuntimePaths) -> RenderedConfig:
    """Render every config into ``paths.config_dir`` and check it as nginx will run it.

    Also makes the folders nginx needs to start (logs, temp); when nginx runs
    as root its workers drop to nobody and write request bodies there.
    """
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    paths.nginx_temp_dir.mkdir(parents=True, exist_ok=True)
    # mtail follows only files that exist when it starts.
    paths.access_log.touch(exist_ok=True)
    if nginx_run_user():
        nobody = pwd.getpwnam("nobody")
        os.chown(paths.nginx_temp_dir, nobody.pw_uid, nobody.pw_gid)
    if plan.spec.console.enabled:
        stage_console()
    rendered = render_all(plan, paths)
    write_rendered(rendered, paths.config_dir)
    check_nginx(paths.nginx_conf, paths.log("nginx-check"))
    if plan.spec.prometheus.enabled:
        check_prometheus(paths.prometheus_yml)
    return rendered
