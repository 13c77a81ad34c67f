"""The runtime directory of a cluster on disk: where every file it writes
lives, and how a file is written so no reader sees half of it.

One place names every path, so the renderer, the supervisor, the CLI and
the controller agree on them. It sits below every layer that reads or
writes those files (docs/architecture.md): a path is a value, not an action.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from router.errors import ClusterError

# Rule files sit beside prometheus.yml, which names them relative to itself.
RECORDING_RULES = "recording.rules.yml"
ALERT_RULES = "alerts.rules.yml"


@dataclass(frozen=True)
class RuntimePaths:
    """Every file and folder under one runtime directory."""

    root: Path
    # `fleet render --out DIR` puts the configs straight into DIR.
    config_override: Path | None = None

    @property
    def config_dir(self) -> Path:
        return self.config_override or self.root / "config"

    @property
    def nginx_conf(self) -> Path:
        return self.config_dir / "nginx.conf"

    @property
    def upstream_conf(self) -> Path:
        return self.config_dir / "upstream.conf"

    @property
    def prometheus_yml(self) -> Path:
        return self.config_dir / "prometheus.yml"

    @property
    def recording_rules(self) -> Path:
        return self.config_dir / RECORDING_RULES

    @property
    def alert_rules(self) -> Path:
        return self.config_dir / ALERT_RULES

    @property
    def access_log(self) -> Path:
        return self.log("gateway-access")

    @property
    def reload_lock(self) -> Path:
        """Held by whoever reloads the gateway: the controller, `fleet keys`, logrotate."""
        return self.root / "gateway-reload.lock"

    @property
    def logrotate_conf(self) -> Path:
        return self.config_dir / "logrotate.conf"

    @property
    def logrotate_state(self) -> Path:
        """logrotate's record of when it last rotated each log."""
        return self.root / "run" / "logrotate.status"

    @property
    def keepalived_conf(self) -> Path:
        return self.config_dir / "keepalived.conf"

    @property
    def gateway_down_flag(self) -> Path:
        """1 while nginx is not running under supervisord, else 0 (keepalived tracks it)."""
        return self.root / "run" / "gateway-down"

    def pid_file(self, program: str) -> Path:
        """The pid file a daemon that insists on one writes (keepalived)."""
        return self.root / "run" / f"{program}.pid"

    @property
    def supervisord_conf(self) -> Path:
        return self.config_dir / "supervisord.conf"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def nginx_temp_dir(self) -> Path:
        return self.root / "nginx-temp"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus-data"

    @property
    def supervisor_socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def supervisord_pid(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def nginx_pid(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def state_json(self) -> Path:
        return self.root / "state.json"

    @property
    def spec_json(self) -> Path:
        """The validated spec the cluster was started with (the controller reads it)."""
        return self.config_dir / "spec.json"

    @property
    def apply_lock(self) -> Path:
        """Held by the one `fleet apply` that is changing this cluster."""
        return self.root / "run" / "apply.lock"

    @property
    def rollout_json(self) -> Path:
        """The progress of a `fleet apply` under way; gone when none is."""
        return self.root / "rollout.json"

    @property
    def overrides_json(self) -> Path:
        """Admin drains and pins, kept across controller restarts."""
        return self.root / "overrides.json"

    @property
    def api_keys(self) -> Path:
        """The key store of `fleet keys` (mode 0600)."""
        return self.root / "api-keys.json"

    @property
    def api_keys_conf(self) -> Path:
        """The key map nginx includes, rendered from the key store (mode 0600)."""
        return self.config_dir / "api-keys.conf"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin-token"

    def launch_state(self, program: str) -> Path:
        return self.root / "run" / f"{program}.pgid"

    def start_lock(self, device: str) -> Path:
        """Held by the one replica of a shared GPU that is starting."""
        return self.root / "run" / f"start-{device}.lock"

    @property
    def shed_dir(self) -> Path:
        """The shed flags' folder when nginx's workers run as we do
        (router.host.machine.shed_dir says where they are otherwise)."""
        return self.root / "run" / "shed"

    def log(self, program: str) -> Path:
        return self.logs_dir / f"{program}.log"

    def create(self) -> None:
        for folder in (self.config_dir, self.logs_dir, self.nginx_temp_dir, self.prometheus_data):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class DiskUse:
    """Bytes under the runtime directory, and the two parts that grow."""

    total: int
    logs: int
    prometheus: int


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``; 0 when it does not exist. Files
    that vanish while it is walked (a rotation, a compaction) are skipped."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


def disk_use(paths: RuntimePaths) -> DiskUse:
    return DiskUse(total=folder_bytes(paths.root), logs=folder_bytes(paths.logs_dir),
                   prometheus=folder_bytes(paths.prometheus_data))


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_admin_token(paths: RuntimePaths) -> str:
    """The controller's admin token, created once with mode 0600."""
    if not paths.admin_token.exists():
        write_atomic(paths.admin_token, secrets.token_urlsafe(32) + "\n", mode=0o600)
    return read_admin_token(paths)


# The shortest pair token accepted: a guessable one would open both gateways.
PAIR_TOKEN_MIN = 16


def adopt_pair_token(paths: RuntimePaths, token_file: Path) -> None:
    """Make the pair's shared secret this gateway's admin token."""
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ClusterError(f"cannot read ha.pair_token_file {token_file}: {exc.strerror}",
                           hint="make it once (`openssl rand -hex 32 > FILE`, mode 0600) and "
                                "copy the same file to every gateway of the pair") from exc
    if len(token) < PAIR_TOKEN_MIN or any(c.isspace() for c in token):
        raise ClusterError(f"ha.pair_token_file {token_file} holds no usable secret "
                           f"({PAIR_TOKEN_MIN} characters or more, no spaces)",
                           hint="write one with `openssl rand -hex 32 > FILE`")
    write_atomic(paths.admin_token, token + "\n", mode=0o600)


def read_admin_token(paths: RuntimePaths) -> str:
    try:
        return paths.admin_token.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise ClusterError(f"no admin token at {paths.admin_token}",
                           hint="it is created by `fleet up`; start the cluster first") from exc
