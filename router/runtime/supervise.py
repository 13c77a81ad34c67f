"""Process supervision through supervisord (PyPI `supervisor`).

supervisord runs every process of a cluster (replicas, gateway, Prometheus)
from the config that :mod:`router.render` writes, restarts each on every
exit, and keeps one log per process. This module starts it, talks to it over
its unix socket (XML-RPC), and stops it so that nothing is left behind.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any, NoReturn

from router.disk.paths import RuntimePaths
from router.errors import ClusterError
from router.runtime.procs import process_alive

# Longer than any program's stopwaitsecs (router.render.programs) plus the kill.
STOP_WAIT_BOUND_S = 90.0


@dataclass(frozen=True)
class ProcessInfo:
    """One supervised program as supervisord reports it."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, EXITED, FATAL, STOPPED, ...
    pid: int
    uptime_s: int
    description: str
    # When supervisord last started it (Unix time; 0 if never): a new value is a new start.
    started_at: int = 0


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # Cache it where Transport.close() looks, so closing the proxy closes it.
        if self._connection[1] is None:
            self._connection = (host, _UnixHTTPConnection(self._path, self._timeout))
        connection = self._connection[1]
        assert connection is not None
        return connection


class Supervisor:
    """A handle on the supervisord of one runtime directory."""

    def __init__(self, paths: RuntimePaths, timeout: float = 10.0) -> None:
        self.paths = paths
        self._timeout = timeout

    def _call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call on a fresh connection, closed afterwards."""
        transport = _UnixTransport(str(self.paths.supervisor_socket), self._timeout)
        with xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport) as proxy:
            return getattr(proxy, method)(*args)

    def pid(self) -> int | None:
        """supervisord's pid if it is alive, else None."""
        try:
            pid = int(self.paths.supervisord_pid.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        if self.pid() is None:
            return False
        try:
            state = self._call("supervisor.getState")
        except (OSError, xmlrpc.client.Error):
            return False
        return bool(state.get("statename") == "RUNNING")

    def start(self) -> None:
        """Start supervisord (it daemonises) and wait until it answers."""
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord",
             "-c", str(self.paths.supervisord_conf)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"supervisord did not start: {(proc.stderr or proc.stdout).strip()}",
                hint=f"see {self.paths.log('supervisord')}",
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.2)
        raise ClusterError("supervisord started but does not answer on its socket",
                           hint=f"see {self.paths.log('supervisord')}")

    def exec_foreground(self) -> NoReturn:
        """Replace this process with supervisord in the foreground (containers, systemd).

        Never returns: supervisord becomes the process the container runtime
        or init watches, so its exit is the cluster's exit.
        """
        argv = [sys.executable, "-m", "supervisor.supervisord", "-n",
                "-c", str(self.paths.supervisord_conf)]
        os.execv(sys.executable, argv)

    def processes(self) -> list[ProcessInfo]:
        try:
            infos = self._call("supervisor.getAllProcessInfo")
        except (OSError, xmlrpc.client.Error) as exc:
            raise ClusterError(f"cannot reach supervisord: {exc}",
                               hint="is the cluster up? run `fleet up`") from exc
        return [
            ProcessInfo(
                name=info["name"], state=info["statename"], pid=int(info["pid"]),
                uptime_s=max(0, int(info["now"]) - int(info["start"])) if info["pid"] else 0,
                description=info["description"], started_at=int(info["start"]),
            )
            for info in infos
        ]

    def process(self, name: str) -> ProcessInfo:
        for info in self.processes():
            if info.name == name:
                return info
        raise ClusterError(f"no supervised process named {name!r}")

    def restart_process(self, name: str) -> str:
        """Stop one program if it runs, then start it; also out of FATAL.

        Returns the state it was in. Waits for the stop (supervisord kills the
        program after its stopwaitsecs) but not for the start.
        """
        before = self.process(name).state
        if before in ("RUNNING", "STARTING", "BACKOFF"):
            try:
                self.stop_process(name)
            except xmlrpc.client.Fault as exc:
                if "NOT_RUNNING" not in exc.faultString:
                    raise
        self.start_process(name)
        return before

    def stop_process(self, name: str) -> None:
        """Stop one program and wait until it has; supervisord will not restart it."""
        # wait=False and a poll here: supervisord would hold a waiting call up
        # to the program's stopwaitsecs (30 s for a replica), longer than one
        # call's socket timeout on a busy host.
        self._call("supervisor.stopProcess", name, False)
        self._wait_stopped(name)

    def _wait_stopped(self, name: str) -> None:
        # supervisord kills a program that outlives its stopwaitsecs, so a stop
        # ends; the bound only guards against a supervisord that stopped answering.
        deadline = time.monotonic() + STOP_WAIT_BOUND_S
        while time.monotonic() < deadline:
            if self.process(name).state not in ("STOPPING", "RUNNING", "STARTING"):
                return
            time.sleep(0.2)
        raise ClusterError(f"{name} did not stop within {STOP_WAIT_BOUND_S:.0f}s",
                           hint=f"see `fleet logs {name}` and {self.paths.log('supervisord')}")

    def reread(self) -> tuple[list[str], list[str], list[str]]:
        """Read supervisord.conf again: (added, changed, removed) program names.

        Nothing runs differently yet: a program takes its new section only when
        :meth:`replace_program` swaps its group.
        """
        added, changed, removed = self._call("supervisor.reloadConfig")[0]
        return list(added), list(changed), list(removed)

    def replace_program(self, name: str) -> None:
        """Stop ``name`` if it runs and start it from the config last read.

        A program the config no longer has is only stopped and dropped; one
        new to supervisord is started.
        """
        known = {p.name for p in self.processes()}
        if name in known:
            try:
                self.stop_process(name)
            except xmlrpc.client.Fault as exc:
                if "NOT_RUNNING" not in exc.faultString:
                    raise
            self._call("supervisor.removeProcessGroup", name)
        try:
            self._call("supervisor.addProcessGroup", name)
        except xmlrpc.client.Fault as exc:
            # BAD_NAME: the config read last has no such program (a removal).
            if "BAD_NAME" not in exc.faultString:
                raise

    def start_process(self, name: str) -> None:
        # wait=False: supervisord would otherwise hold the call for startsecs.
        self._call("supervisor.startProcess", name, False)

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Stop every program gracefully, then supervisord; kill what lingers."""
        pid = self.pid()
        if pid is None:
            return
        try:
            self._call("supervisor.shutdown")
        except (OSError, xmlrpc.client.Error):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        raise ClusterError(f"supervisord (pid {pid}) did not stop within {timeout_s:.0f}s; "
                           "it was killed", hint="check `fleet logs` for a program that hangs")
