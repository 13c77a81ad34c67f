"""Writing a cluster's rendered configs into its runtime folder, checked.

A bad render never replaces a good file that a running process reads: the
files are written into ``config/`` before anything starts, checked as nginx
and Prometheus will run them, and a failed check stops `fleet up` with the
tool's own words.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from router.config.plan import ClusterPlan
from router.disk.keys import load_store
from router.disk.paths import RuntimePaths, write_atomic
from router.errors import RenderError
from router.host.machine import MachineFacts, detect, find_binary, stage_console
from router.render.files import RenderedConfig, render_all
from router.runtime.gateway import nginx_test


def _refusal(argv: list[str]) -> str | None:
    """Run a tool's own check of a config: None when it passes, else the last
    line the tool said (its verdict: promtool and keepalived end on it)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def check_prometheus(config: Path) -> None:
    """Run `promtool check config` when promtool is installed."""
    promtool = find_binary("promtool")
    if promtool is None:
        return
    problem = _refusal([promtool, "check", "config", str(config)])
    if problem is not None:
        raise RenderError(f"promtool rejected {config}: {problem}")


def check_keepalived(config: Path, keepalived: str) -> None:
    """Run `keepalived -t` on the rendered config: its own words on a bad one."""
    problem = _refusal([keepalived, "-t", "-l", "-f", str(config)])
    if problem is not None:
        raise RenderError(f"keepalived rejected {config}: {problem}",
                          hint="fix the ha value it names in the spec; the running pair was "
                               "left as it was")


def write_rendered(rendered: RenderedConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.files.items():
        write_atomic(out_dir / name, text, mode=0o600 if name in rendered.private else 0o644)


def write_checked(plan: ClusterPlan, paths: RuntimePaths,
                  machine: MachineFacts | None = None) -> RenderedConfig:
    """Render every config into ``paths.config_dir`` and check it as nginx will run it.

    Also makes the folders nginx needs to start (logs, temp); when nginx runs
    as root its workers drop to nobody and write request bodies there.
    """
    machine = machine or detect()
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    paths.nginx_temp_dir.mkdir(parents=True, exist_ok=True)
    paths.logrotate_state.parent.mkdir(parents=True, exist_ok=True)
    # mtail follows only files that exist when it starts.
    paths.access_log.touch(exist_ok=True)
    if machine.run_user:
        nobody = pwd.getpwnam("nobody")
        os.chown(paths.nginx_temp_dir, nobody.pw_uid, nobody.pw_gid)
    if plan.spec.console.enabled:
        stage_console(machine)
    rendered = render_all(plan, paths, machine, load_store(paths.api_keys))
    write_rendered(rendered, paths.config_dir)
    problem = nginx_test(paths)
    if problem is not None:
        raise RenderError(
            f"nginx rejected {paths.nginx_conf}: {problem}",
            hint="the running gateway was left as it was; fix the spec value named above")
    if plan.spec.prometheus.enabled:
        check_prometheus(paths.prometheus_yml)
    if plan.spec.ha.enabled:
        paths.gateway_down_flag.parent.mkdir(parents=True, exist_ok=True)
        check_keepalived(paths.keepalived_conf, machine.binary("keepalived"))
    return rendered
