"""Changing one file of the running gateway's configuration, safely.

The controller rewrites upstream.conf (weights) and `fleet keys` rewrites
api-keys.conf (API keys); both go through :func:`apply_gateway_file`:
1. write the new text atomically, keeping the previous text;
2. `nginx -t` the whole configuration; on failure restore the previous file;
3. SIGHUP the nginx master (a graceful reload: old workers finish their
   streams, bounded by worker_shutdown_timeout);
4. verify that nginx now runs the new file: a version the file declares must
   be answered on the status port within a few seconds; otherwise restore
   the previous file and reload again.
The gateway keeps serving the configuration it had after every failure. A
lock file serialises writers, so a key change and a weight change never
reload each other's untested file.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from router.disk.paths import RuntimePaths, write_atomic
from router.errors import ConfigWriteFailed, NginxReloadFailed, NginxTestFailed
from router.host.machine import require_binary

VERIFY_TIMEOUT_S = 5.0


def status_url(status_port: int, what: str) -> str:
    """Where the status port answers the live version of ``what`` (config, keys)."""
    return f"http://127.0.0.1:{status_port}/fleet/{what}-version"


def live_version(url: str) -> str | None:
    try:
        response = requests.get(url, timeout=1.0)
    except requests.RequestException:
        return None
    return response.text.strip() if response.status_code == 200 else None


def nginx_test(paths: RuntimePaths, conf: Path | None = None) -> str | None:
    """nginx's first complaint about the configuration on disk, or None.

    The one `nginx -t` of llm-fleet: `fleet up` and every reload check the
    configuration exactly as the gateway program runs it (same prefix);
    ``conf`` checks a candidate main file beside the live one instead.
    """
    proc = subprocess.run(
        [require_binary("nginx"), "-t", "-q", "-e", str(paths.log("nginx-check")),
         "-p", str(paths.root), "-c", str(conf or paths.nginx_conf)],
        capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[0] if lines else f"nginx -t exited {proc.returncode}"


def gateway_pid(paths: RuntimePaths) -> int | None:
    """The nginx master's pid when one is running, else None."""
    try:
        pid = int(paths.nginx_pid.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def signal_reload(paths: RuntimePaths) -> None:
    pid = gateway_pid(paths)
    if pid is None:
        raise NginxReloadFailed(f"no nginx master is running (pid file {paths.nginx_pid})",
                                hint="is the gateway running? see `fleet status`")
    os.kill(pid, signal.SIGHUP)


# Reads in a row that must answer the new version: right after a reload an
# old worker can still answer one connection with the old file's version.
LIVE_READS = 3


def _wait_live(url: str, version: str) -> bool:
    deadline = time.monotonic() + VERIFY_TIMEOUT_S
    seen = 0
    while time.monotonic() < deadline:
        seen = seen + 1 if live_version(url) == version else 0
        if seen >= LIVE_READS:
            return True
        time.sleep(0.05)
    return False


@contextmanager
def _reload_lock(paths: RuntimePaths) -> Iterator[None]:
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.reload_lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _restore(target: Path, previous: str | None, mode: int) -> None:
    if previous is None:
        target.unlink(missing_ok=True)
    else:
        write_atomic(target, previous, mode)


def apply_gateway_file(paths: RuntimePaths, target: Path, text: str, *, version: str,
                       version_url: str, mode: int = 0o644) -> float:
    """Make the running nginx serve ``text`` as ``target``; seconds taken.

    Raises NginxReloadFailed after putting the previous file back.
    """
    started = time.monotonic()
    with _reload_lock(paths):
        previous = target.read_text(encoding="utf-8") if target.exists() else None
        try:
            write_atomic(target, text, mode)
        except OSError as exc:
            # write_atomic leaves the old file whole: nginx has nothing to reload.
            raise ConfigWriteFailed(
                f"cannot write {target}: {exc.strerror or exc}",
                hint=f"free space on the disk of {paths.root}; the previous configuration "
                     "keeps serving and the change is retried") from exc
        problem = nginx_test(paths)
        if problem is not None:
            _restore(target, previous, mode)
            raise NginxTestFailed(f"nginx -t rejected the new {target.name}: {problem}",
                                  hint="the previous configuration is still serving")
        try:
            signal_reload(paths)
        except NginxReloadFailed:
            _restore(target, previous, mode)
            raise
        if not _wait_live(version_url, version):
            _restore(target, previous, mode)
            signal_reload(paths)
            raise NginxReloadFailed(
                f"nginx did not run {target.name} version {version} within "
                f"{VERIFY_TIMEOUT_S:g}s of the reload", hint=f"see {paths.log('nginx-error')}")
    return time.monotonic() - started
