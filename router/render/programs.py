"""The processes of a cluster, and supervisord's config that runs them.

:func:`programs` is the one program table: supervisord's config, the
systemd units (router.render.systemd) and the tests read it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from router.config.plan import ClusterPlan, ReplicaPlan
from router.disk.paths import RuntimePaths
from router.host.machine import MachineFacts
from router.render.templates import template


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


def replica_program(replica: ReplicaPlan, paths: RuntimePaths, machine: MachineFacts) -> Program:
    # router.launch keeps vLLM's engine processes from outliving a killed replica.
    launcher: tuple[str, ...] = (machine.python, "-m", "router.launch",
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


def gateway_program(paths: RuntimePaths, machine: MachineFacts) -> Program:
    return Program(
        name="gateway",
        comment="nginx, the one URL clients use",
        # router.gateway_launch retires the workers of a master that was
        # killed; they would hold the ports and keep the new master out.
        argv=(machine.python, "-m", "router.gateway_launch", "--pid-file", str(paths.nginx_pid),
              "--", machine.binary("nginx"), "-e", str(paths.log("nginx-error")), "-p",
              str(paths.root), "-c", str(paths.nginx_conf)),
        startsecs=1,
        # QUIT is nginx's graceful shutdown: open streams finish first.
        stopsignal="QUIT",
        stopwaitsecs=30,
    )


def prometheus_program(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> Program:
    prom = plan.spec.prometheus
    return Program(
        name="prometheus",
        comment="Prometheus, scraping every replica",
        argv=(machine.binary("prometheus"), f"--config.file={paths.prometheus_yml}",
              f"--storage.tsdb.path={paths.prometheus_data}",
              f"--storage.tsdb.retention.time={prom.retention}",
              f"--storage.tsdb.retention.size={prom.retention_size}",
              f"--web.listen-address=127.0.0.1:{prom.port}",
              "--web.enable-lifecycle"),
        stopwaitsecs=20,
    )


def controller_program(paths: RuntimePaths, machine: MachineFacts) -> Program:
    return Program(
        name="controller",
        comment="the adaptive weight controller and its admin API",
        argv=(machine.python, "-m", "router.cli", "controller", "run",
              "--spec", str(paths.spec_json)),
        env={"PYTHONUNBUFFERED": "1"},
        stopwaitsecs=15,
    )


def gpu_exporter_program(plan: ClusterPlan, paths: RuntimePaths,
                         machine: MachineFacts) -> Program:
    return Program(
        name="gpu-exporter",
        comment="NVML readings per GPU, labelled with the replica pinned to it",
        argv=(machine.python, "-m", "router.gpu_exporter", "--port",
              str(plan.spec.gpu_exporter.port), "--state", str(paths.state_json)),
    )


def nginx_exporter_program(plan: ClusterPlan, machine: MachineFacts) -> Program:
    gw = plan.spec.gateway
    return Program(
        name="nginx-exporter",
        comment="nginx's stub_status counters as Prometheus metrics",
        # Debian's 0.11 build takes single-dash flags.
        argv=(machine.binary("prometheus-nginx-exporter"),
              f"-nginx.scrape-uri=http://127.0.0.1:{gw.status_port}/stub_status",
              f"-web.listen-address=127.0.0.1:{plan.spec.gateway_metrics.nginx_exporter_port}",
              # nginx may still be starting: wait for it instead of exiting.
              "-nginx.retries=30", "-nginx.retry-interval=1s"),
        startsecs=1,
    )


def log_exporter_program(plan: ClusterPlan, paths: RuntimePaths,
                         machine: MachineFacts) -> Program:
    return Program(
        name="log-exporter",
        comment="mtail: per-replica requests, statuses and latency from the access log",
        argv=(machine.binary("mtail"), "-progs", str(machine.mtail_programs),
              "-logs", str(paths.access_log),
              "-address", "127.0.0.1", "-port", str(plan.spec.gateway_metrics.log_exporter_port),
              "-emit_prog_label=false", "-logtostderr"),
        startsecs=1,
    )


def log_rotation_program(plan: ClusterPlan, paths: RuntimePaths,
                         machine: MachineFacts) -> Program:
    rotate = shlex.join([machine.binary("logrotate"), "--state", str(paths.logrotate_state),
                         str(paths.logrotate_conf)])
    return Program(
        name="log-rotation",
        comment="logrotate for nginx's access and error logs",
        # logrotate runs once and exits; a container has no cron to call it.
        # A failed pass says why in this program's log and is tried again.
        argv=("/bin/sh", "-c",
              f"while :; do {rotate}; sleep {plan.spec.logs.check_interval_s}; done"),
        startsecs=1,
    )


def keepalived_program(paths: RuntimePaths, machine: MachineFacts) -> Program:
    return Program(
        name="keepalived",
        comment="VRRP: holds the gateway pair's virtual IP while this gateway answers",
        argv=(machine.binary("keepalived"), "--dont-fork", "--log-console", "--log-detail",
              "--no-syslog", "--vrrp", "--use-file", str(paths.keepalived_conf),
              "--pid", str(paths.pid_file("keepalived")),
              "--vrrp_pid", str(paths.pid_file("keepalived-vrrp"))),
        startsecs=1,
        # TERM gives the address up with a priority-0 advert: the other
        # gateway takes it at once instead of after three missed adverts.
        stopwaitsecs=10,
    )


def listing_program(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> Program:
    topology = plan.spec.topology
    return Program(
        name="replica-listing",
        comment=f"lists this host's replicas for the gateway hosts, port "
                f"{topology.listing_port}",
        argv=(machine.python, "-m", "router.replica_listing", "--state", str(paths.state_json),
              "--host", topology.listen, "--port", str(topology.listing_port)),
        env={"PYTHONUNBUFFERED": "1"},
        startsecs=1,
    )


def programs(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> list[Program]:
    progs = [replica_program(r, paths, machine) for r in plan.replicas if not r.external]
    if plan.spec.topology.role == "replicas":
        progs.append(listing_program(plan, paths, machine))
        if plan.gpu_exporter:
            progs.append(gpu_exporter_program(plan, paths, machine))
        return progs
    progs.append(gateway_program(paths, machine))
    if plan.spec.ha.enabled:
        progs.append(keepalived_program(paths, machine))
    progs.append(log_rotation_program(plan, paths, machine))
    if plan.spec.prometheus.enabled:
        progs.append(prometheus_program(plan, paths, machine))
    if plan.spec.controller.enabled:
        progs.append(controller_program(paths, machine))
    if plan.gpu_exporter:
        progs.append(gpu_exporter_program(plan, paths, machine))
    if plan.spec.gateway_metrics.enabled:
        progs.append(nginx_exporter_program(plan, machine))
        progs.append(log_exporter_program(plan, paths, machine))
    return progs


def gateway_watch_listener(paths: RuntimePaths, machine: MachineFacts) -> Program:
    return Program(
        name="gateway-watch",
        comment="tells keepalived at once when nginx stops or starts (router.gateway_watch)",
        argv=(machine.python, "-m", "router.gateway_watch", "--flag",
              str(paths.gateway_down_flag), "--program", "gateway"),
        startsecs=1,
    )


def listeners(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> list[Program]:
    """supervisord's event listeners: only under supervisord, never a systemd unit."""
    return [gateway_watch_listener(paths, machine)] if plan.spec.ha.enabled else []


def render_supervisord(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> str:
    return template("deploy/supervisord.conf.j2").render(
        paths={
            "root": paths.root,
            "socket": paths.supervisor_socket,
            "pid": paths.supervisord_pid,
            "logs": paths.logs_dir,
        },
        programs=programs(plan, paths, machine),
        listeners=listeners(plan, paths, machine),
    )
