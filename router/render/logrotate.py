"""logrotate's configuration for the logs nginx writes itself."""

from __future__ import annotations

from router.config.plan import ClusterPlan
from router.disk.paths import RuntimePaths
from router.host.machine import MachineFacts
from router.render.templates import template


def render_logrotate(plan: ClusterPlan, paths: RuntimePaths, machine: MachineFacts) -> str:
    logs = plan.spec.logs
    return template("deploy/logrotate.conf.j2").render(
        logs=[paths.access_log, paths.log("nginx-error")],
        rotate_size_mb=logs.rotate_size_mb, keep=logs.keep, max_age_days=logs.max_age_days,
        check_interval_s=logs.check_interval_s, nginx_pid=paths.nginx_pid,
        # USR1 makes every worker reopen the logs by path. Workers that
        # dropped to nobody may not reach a runtime folder under /root, so
        # then a reload (HUP) has the master open them for new workers,
        # under the same lock as the controller's reloads.
        reopen_signal="HUP" if machine.run_user else "USR1",
        reload_lock=paths.reload_lock)
