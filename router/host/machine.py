"""Facts about this machine that rendered configs depend on, resolved once.

Rendering is pure: it reads a :class:`MachineFacts` instead of the process
table, the password database or ``PATH``. :func:`detect` is the one place
that looks; tests build the value by hand. Binary lookup lives here too, so
every caller that runs nginx or Prometheus finds the same executable.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from router import REPO_ROOT
from router.errors import EnvironmentError_

CONSOLE_SOURCE = REPO_ROOT / "nginx" / "console"
# mtail loads every program in this folder.
MTAIL_PROGRAMS = REPO_ROOT / "nginx" / "mtail"
# When nginx starts as root its workers run as nobody, who may not be able to
# reach a checkout under /root or a private temp folder; the console is then
# served from a root-owned, world-readable copy here, one folder per content.
CONSOLE_STAGING = Path("/var/cache/llm-fleet/console")
# The classes the controller sheds (spec priority.shed_queue_wait_s), one
# flag file each, tested by nginx's workers on every request: with workers
# running as nobody they live here, one folder per runtime directory, on
# the tmpfs a reboot clears.
SHED_STAGING = Path("/run/llm-fleet/shed")

# Each system program a cluster runs, and the Debian package that brings it.
PACKAGES: Mapping[str, str] = {
    "nginx": "nginx-light",
    "prometheus": "prometheus",
    "prometheus-nginx-exporter": "prometheus-nginx-exporter",
    "mtail": "mtail",
    "logrotate": "logrotate",
    # A gateway pair (ha.enabled): VRRP, and the health check it runs.
    "keepalived": "keepalived",
    "curl": "curl",
}


# Where Debian's dynamic nginx modules live, and each module's package.
NGINX_MODULES_DIR = Path("/usr/lib/nginx/modules")
NGINX_MODULES: Mapping[str, str] = {"ngx_http_js_module": "libnginx-mod-http-js"}
# The njs script that reads affinity keys (gateway.affinity).
AFFINITY_SCRIPT = REPO_ROOT / "nginx" / "affinity.js"
# The njs scripts of priority classes and token budgets: body.js (fields
# written into a request's body), flags.js (answers from the controller's
# flags), usage.js (each answer's tokens).
NJS_SCRIPTS = REPO_ROOT / "nginx"


def find_nginx_module(name: str, folders: tuple[Path, ...] | None = None) -> str | None:
    """A dynamic module beside the nginx in use (an offline bundle's), else Debian's."""
    if folders is None:
        nginx = find_binary("nginx")
        beside = (Path(nginx).resolve().parent.parent / "lib" / "nginx" / "modules",) if nginx \
            else ()
        folders = (*beside, NGINX_MODULES_DIR)
    for folder in folders:
        candidate = folder / f"{name}.so"
        if candidate.is_file():
            return str(candidate)
    return None


def find_binary(name: str) -> str | None:
    """The executable ``name`` on PATH or in the Debian locations, else None."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binary(name: str) -> str:
    """The executable ``name``, or an error naming the package to install."""
    found = find_binary(name)
    if found is None:
        raise _missing(name)
    return found


def _missing(name: str) -> EnvironmentError_:
    return EnvironmentError_(
        f"{name} is not installed",
        hint="run `make up` or `sudo deploy/setup.sh` "
             f"(installs the Debian package {PACKAGES.get(name, name)})")


def nginx_run_user() -> str | None:
    """Workers drop to nobody when nginx is started as root, else run as we do."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"


def console_digest(source: Path = CONSOLE_SOURCE) -> str:
    digest = hashlib.sha256()
    for file in sorted(source.rglob("*")):
        if file.is_file():
            digest.update(file.relative_to(source).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def console_root(run_user: str | None, source: Path = CONSOLE_SOURCE,
                 staging: Path = CONSOLE_STAGING) -> Path:
    """Where nginx serves the console from (see CONSOLE_STAGING)."""
    return source if run_user is None else staging / console_digest(source)


def shed_dir(runtime_root: Path, run_user: str | None, own: Path,
             staging: Path = SHED_STAGING) -> Path:
    """Where the shed flags of the cluster in ``runtime_root`` live (see
    SHED_STAGING); ``own``: the runtime directory's folder for them."""
    if run_user is None:
        return own
    digest = hashlib.sha256(str(runtime_root.resolve()).encode()).hexdigest()[:12]
    return staging / digest


@dataclass(frozen=True)
class MachineFacts:
    """What the rendered files need to know of the machine they run on."""

    # `user` line for nginx when it starts as root; None runs workers as us.
    run_user: str | None
    console_root: Path
    mtail_programs: Path
    python: str
    # Program name -> its executable; None where it is not installed. A
    # missing one is an error only when a rendered file needs it.
    binaries: Mapping[str, str | None] = field(default_factory=dict)
    # Dynamic nginx module name -> its .so; None where it is not installed.
    nginx_modules: Mapping[str, str | None] = field(default_factory=dict)
    affinity_script: Path = AFFINITY_SCRIPT
    njs_scripts: Path = NJS_SCRIPTS

    def binary(self, name: str) -> str:
        found = self.binaries.get(name)
        if found is None:
            raise _missing(name)
        return found

    def nginx_module(self, name: str, needed_by: tuple[str, ...]) -> str:
        """The module's .so; ``needed_by``: the spec settings that need it,
        each as the setting that turns it off (e.g. "gateway.affinity: off")."""
        found = self.nginx_modules.get(name)
        if found is None:
            raise EnvironmentError_(
                f"the nginx module {name} is not installed (needed by "
                f"{' and '.join(s.split(':')[0] for s in needed_by)})",
                hint="run `make up` or `sudo deploy/setup.sh` (installs the Debian package "
                     f"{NGINX_MODULES.get(name, name)}), or set {' and '.join(needed_by)}")
        return found


def detect() -> MachineFacts:
    """Look at this machine once: run user, console location, executables."""
    run_user = nginx_run_user()
    return MachineFacts(
        run_user=run_user,
        console_root=console_root(run_user),
        mtail_programs=MTAIL_PROGRAMS,
        python=sys.executable,
        binaries={name: find_binary(name) for name in PACKAGES},
        nginx_modules={name: find_nginx_module(name) for name in NGINX_MODULES},
    )


def stage_console(facts: MachineFacts, source: Path = CONSOLE_SOURCE,
                  staging: Path = CONSOLE_STAGING) -> None:
    """Copy the console where nobody can read it, when workers run as nobody."""
    target = facts.console_root
    if target == source or target.is_dir():
        return
    temporary = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, temporary)
    for folder in [temporary, *[p for p in temporary.rglob("*") if p.is_dir()]]:
        folder.chmod(0o755)
    for file in temporary.rglob("*"):
        if file.is_file():
            file.chmod(0o644)
    # Both folders are llm-fleet's own; nobody must be able to enter them.
    for parent in (staging, staging.parent):
        parent.chmod(0o755)
    try:
        temporary.rename(target)
    except OSError:
        # Another cluster staged the same content first.
        shutil.rmtree(temporary, ignore_errors=True)
